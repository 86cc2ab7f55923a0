// coro_go.go - Go peer of bench_coro: queue_pingpong with unbuffered
// channels, and the sleeping-goroutine metrics.
//
// usage: go run coro_go.go [--reps N] [--n N] [SCALE] [METRIC ...]
//
// SCALE multiplies the iteration count (default 1.0); METRICs select a
// subset (default: queue_pingpong).  Prints one line per metric,
// METRIC<TAB>go<TAB>VALUE<TAB>UNIT.  Everything runs with GOMAXPROCS=1 (one
// thread, as conc's greenlets and gevent's).
//
//	queue_pingpong     ops/s, the best of N repetitions: round trips
//	                   between two goroutines passing a value back and forth
//	                   through two unbuffered channels.  A wrong echoed
//	                   value prints "failed".
//	rss_per_sleeping,  bytes: start --n goroutines (default 100000) that
//	rss_per_sleeping_1m each sleep an hour, wait until all run, and divide
//	                   the growth of the RSS (/proc/self/statm) by their
//	                   number.  The process ends with them asleep.
//	sleepers_1m        s: start --n goroutines (default 1000000) that each
//	                   sleep 1 s, wait for them all (sync.WaitGroup): the
//	                   job of conc's coro-sleepers --count N --sleep 1.
//	sleepers_1m_bytes  bytes: that job's peak RSS (VmHWM) less the RSS
//	                   before it, per goroutine.
//
// The memory metrics are measured once, each in a process of its own
// (bench_coro runs this program once per metric).
package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const system = "go"

// pingpong returns ns per round trip, or -1 when a value came back wrong.
func pingpong(n int) float64 {
	ping := make(chan int)
	pong := make(chan int)
	go func() {
		for v := range ping {
			pong <- v
		}
		close(pong)
	}()
	bad := 0
	t0 := time.Now()
	for i := 1; i <= n; i++ {
		ping <- i
		if <-pong != i {
			bad++
		}
	}
	ns := time.Since(t0).Nanoseconds()
	close(ping)
	<-pong // the echoer has ended
	if bad != 0 {
		return -1
	}
	return float64(ns) / float64(n)
}

// statusBytes reads a "Name:   N kB" line of /proc/self/status, or -1.
func statusBytes(name string) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, name+":") {
			f := strings.Fields(l)
			if len(f) >= 2 {
				if v, err := strconv.ParseInt(f[1], 10, 64); err == nil {
					return v * 1024
				}
			}
		}
	}
	return -1
}

// rssBytes is the resident set size from /proc/self/statm, or -1.
func rssBytes() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return -1
	}
	v, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return -1
	}
	return v * int64(os.Getpagesize())
}

// rssPerSleeping: bytes of RSS per goroutine asleep for an hour.
func rssPerSleeping(n int) float64 {
	runtime.GC()
	before := rssBytes()
	var started int64
	for i := 0; i < n; i++ {
		go func() {
			atomic.AddInt64(&started, 1)
			time.Sleep(time.Hour)
		}()
	}
	for atomic.LoadInt64(&started) < int64(n) {
		runtime.Gosched()
	}
	after := rssBytes()
	if before < 0 || after < 0 {
		return -1
	}
	return float64(after-before) / float64(n)
}

// sleepers: seconds for n goroutines sleeping 1 s each, and peak RSS
// growth per goroutine.
func sleepers(n int) (float64, float64) {
	runtime.GC()
	before := rssBytes()
	var wg sync.WaitGroup
	t0 := time.Now()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			time.Sleep(time.Second)
			wg.Done()
		}()
	}
	wg.Wait()
	s := time.Since(t0).Seconds()
	peak := statusBytes("VmHWM")
	if before < 0 || peak < 0 {
		return s, -1
	}
	return s, float64(peak-before) / float64(n)
}

func main() {
	runtime.GOMAXPROCS(1)
	reps, scale, count := 5, 1.0, 0
	var want []string
	args := os.Args[1:]
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
		case a == "--reps" && i+1 < len(args):
			if r, err := strconv.Atoi(args[i+1]); err == nil && r > 0 {
				reps = r
			}
			i++
		case a == "--n" && i+1 < len(args):
			if r, err := strconv.Atoi(args[i+1]); err == nil && r > 0 {
				count = r
			}
			i++
		case len(a) > 0 && (a[0] == '.' || (a[0] >= '0' && a[0] <= '9')):
			if f, err := strconv.ParseFloat(a, 64); err == nil {
				scale = f
			}
		default:
			want = append(want, a)
		}
	}
	run := len(want) == 0
	for _, m := range want {
		switch m {
		case "queue_pingpong":
			run = true
		case "rss_per_sleeping", "rss_per_sleeping_1m":
			n := count
			if n == 0 {
				n = 100000
			}
			if v := rssPerSleeping(n); v >= 0 {
				fmt.Printf("%s\t%s\t%.1f\tbytes\n", m, system, v)
			} else {
				fmt.Printf("%s\t%s\tfailed\tbytes\n", m, system)
			}
			return
		case "sleepers_1m", "sleepers_1m_bytes":
			n := count
			if n == 0 {
				n = 1000000
			}
			s, b := sleepers(n)
			fmt.Printf("sleepers_1m\t%s\t%.3f\ts\n", system, s)
			if b >= 0 {
				fmt.Printf("sleepers_1m_bytes\t%s\t%.1f\tbytes\n", system, b)
			} else {
				fmt.Printf("sleepers_1m_bytes\t%s\tfailed\tbytes\n", system)
			}
			return
		}
	}
	if !run {
		return
	}
	n := int(2000000 * scale)
	if n < 1000 {
		n = 1000
	}
	pingpong(n / 10) // warm-up
	best, failed := -1.0, false
	for r := 0; r < reps; r++ {
		v := pingpong(n)
		if v < 0 {
			failed = true
		} else if best < 0 || v < best {
			best = v
		}
	}
	if failed || best <= 0 {
		fmt.Printf("queue_pingpong\t%s\tfailed\tops/s\n", system)
		return
	}
	fmt.Printf("queue_pingpong\t%s\t%.1f\tops/s\n", system, 1e9/best)
}
