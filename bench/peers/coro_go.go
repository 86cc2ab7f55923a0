// coro_go.go - Go peer of bench_coro: queue_pingpong with unbuffered
// channels.
//
// usage: go run coro_go.go [--reps N] [SCALE] [METRIC ...]
//
// SCALE multiplies the iteration count (default 1.0); METRICs select a
// subset (only queue_pingpong exists here).  Prints
// queue_pingpong<TAB>go<TAB>VALUE<TAB>ops/s, the best of N repetitions:
// round trips per second between two goroutines passing a value back and
// forth through two unbuffered channels, with GOMAXPROCS=1 (one thread, as
// conc's greenlets and gevent's).  A wrong echoed value prints "failed".
package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
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

func main() {
	runtime.GOMAXPROCS(1)
	reps, scale := 5, 1.0
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
		if m == "queue_pingpong" {
			run = true
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
