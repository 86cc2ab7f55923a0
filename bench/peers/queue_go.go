// queue_go.go - Go peer of bench_queue: the thread-queue metrics with
// channels between goroutines.
//
// usage:
//
//	go build -o queue_go queue_go.go
//	queue_go [--system NAME] [--reps N] [SCALE] [METRIC ...]
//
// SCALE multiplies the iteration counts (default 1.0); METRICs select a
// subset (default: both).  Prints METRIC<TAB>SYSTEM<TAB>VALUE<TAB>UNIT lines,
// the median of N repetitions, for two systems (--system: only that one):
//
//	go             a buffered channel of capacity 1024 (bench_queue's
//	               conc_queue has maxsize 1024)
//	go-unbuffered  an unbuffered channel
//
// and two metrics, defined as in bench_queue.c:
//
//	thread_queue_stream    msg/s: one goroutine sends 1..n, another
//	                       receives them and checks their order
//	thread_queue_pingpong  ops/s: round trips of one value bounced between
//	                       two goroutines through two channels
//
// GOMAXPROCS is left at its default (the number of CPUs), so the two
// goroutines run in parallel as bench_queue's two threads do; Go has no
// way to pin a goroutine to a CPU.  A value that comes back wrong prints
// VALUE "failed".
package main

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"time"
)

const capacity = 1024

// stream returns ns for n messages, or -1 when one arrived wrong.
func stream(n int, capa int) float64 {
	ch := make(chan int, capa)
	bad := make(chan int)
	t0 := time.Now()
	go func() {
		wrong := 0
		for i := 1; i <= n; i++ {
			if <-ch != i {
				wrong++
			}
		}
		bad <- wrong
	}()
	for i := 1; i <= n; i++ {
		ch <- i
	}
	wrong := <-bad
	ns := time.Since(t0).Nanoseconds()
	if wrong != 0 {
		return -1
	}
	return float64(ns)
}

// pingpong returns ns for n round trips, or -1 when a value came back wrong.
func pingpong(n int, capa int) float64 {
	ping := make(chan int, capa)
	pong := make(chan int, capa)
	go func() {
		for v := range ping {
			pong <- v
		}
		close(pong)
	}()
	wrong := 0
	t0 := time.Now()
	for i := 1; i <= n; i++ {
		ping <- i
		if <-pong != i {
			wrong++
		}
	}
	ns := time.Since(t0).Nanoseconds()
	close(ping)
	<-pong // the echoer has ended
	if wrong != 0 {
		return -1
	}
	return float64(ns)
}

type metric struct {
	name string
	unit string
	base int
	body func(n int, capa int) float64
}

var metrics = []metric{
	{"thread_queue_stream", "msg/s", 5000000, stream},
	{"thread_queue_pingpong", "ops/s", 500000, pingpong},
}

var systems = []struct {
	name string
	capa int
}{
	{"go", capacity},
	{"go-unbuffered", 0},
}

// measure returns the median ns per operation, or -1 on a wrong result.
func measure(m metric, n int, capa int, reps int) float64 {
	if m.body(n/10+1, capa) < 0 { // warm-up
		return -1
	}
	var t []float64
	for r := 0; r < reps; r++ {
		ns := m.body(n, capa)
		if ns < 0 {
			return -1
		}
		t = append(t, ns/float64(n))
	}
	sort.Float64s(t)
	if reps%2 == 1 {
		return t[reps/2]
	}
	return (t[reps/2-1] + t[reps/2]) / 2
}

func main() {
	reps, scale := 5, 1.0
	var want []string
	only := ""
	args := os.Args[1:]
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
		case a == "--system" && i+1 < len(args):
			only = args[i+1]
			known := false
			for _, s := range systems {
				known = known || s.name == only
			}
			if !known {
				fmt.Fprintf(os.Stderr, "queue_go: unknown system %q\n", only)
				os.Exit(2)
			}
			i++
		case a == "--reps" && i+1 < len(args):
			r, err := strconv.Atoi(args[i+1])
			if err != nil || r < 1 {
				fmt.Fprintf(os.Stderr, "queue_go: bad --reps %q\n", args[i+1])
				os.Exit(2)
			}
			reps = r
			i++
		case len(a) > 0 && (a[0] == '.' || (a[0] >= '0' && a[0] <= '9')):
			f, err := strconv.ParseFloat(a, 64)
			if err != nil || !(f > 0) {
				fmt.Fprintf(os.Stderr, "queue_go: bad SCALE %q\n", a)
				os.Exit(2)
			}
			scale = f
		default:
			known := false
			for _, m := range metrics {
				known = known || m.name == a
			}
			if !known {
				fmt.Fprintf(os.Stderr, "queue_go: unknown metric %q\n", a)
				os.Exit(2)
			}
			want = append(want, a)
		}
	}
	for _, m := range metrics {
		run := len(want) == 0
		for _, w := range want {
			run = run || w == m.name
		}
		if !run {
			continue
		}
		n := int(float64(m.base) * scale)
		if n < 1000 {
			n = 1000
		}
		for _, s := range systems {
			if only != "" && s.name != only {
				continue
			}
			ns := measure(m, n, s.capa, reps)
			if ns <= 0 {
				fmt.Fprintf(os.Stderr, "queue_go: %s/%s: a value arrived wrong\n", m.name, s.name)
				fmt.Printf("%s\t%s\tfailed\t%s\n", m.name, s.name, m.unit)
				continue
			}
			fmt.Printf("%s\t%s\t%.1f\t%s\n", m.name, s.name, 1e9/ns, m.unit)
		}
	}
}
