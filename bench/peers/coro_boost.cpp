// coro_boost.cpp - Boost.Context peer of bench_coro: the same metrics with
// Boost.Context's fcontext layer (make_fcontext / jump_fcontext), the
// fastest context switch Boost offers (boost::context::fiber and
// callcc are built on it).
//
// usage: coro_boost [--reps N] [SCALE] [METRIC ...]
//
// SCALE multiplies the iteration counts (default 1.0); METRICs select a
// subset (default: all).  Prints one line per metric,
// METRIC<TAB>boost<TAB>VALUE<TAB>ns, the best of N repetitions:
//
//   switch  ns per switch: main and one context jump back and forth passing
//           a value (a round trip is two switches)
//   create  ns to make a context on a fresh 64 KiB stack (malloc, like
//           boost::context::fixedsize_stack), jump in, get a value back,
//           free the stack
//
// A wrong echoed value or sum prints VALUE "failed".
#include <boost/context/detail/fcontext.hpp>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace ctx = boost::context::detail;

static const std::size_t kStack = 64 * 1024;

static int64_t now_ns()
{
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// Echoes every value back to whoever jumped to it, forever.
static void echo(ctx::transfer_t t)
{
    for (;;)
        t = ctx::jump_fcontext(t.fctx, t.data);
}

// Returns the value + 1 to its creator, which never resumes it.
static void add_one(ctx::transfer_t t)
{
    ctx::jump_fcontext(t.fctx, reinterpret_cast<void *>(reinterpret_cast<uintptr_t>(t.data) + 1));
    std::abort();
}

// ns per switch, or -1 on a wrong result.
static double switch_run(long rounds)
{
    char *stack = static_cast<char *>(std::malloc(kStack));
    ctx::fcontext_t c = ctx::make_fcontext(stack + kStack, kStack, echo);
    ctx::transfer_t t = ctx::jump_fcontext(c, nullptr);     // start it
    int64_t t0 = now_ns();
    for (long i = 0; i < rounds; i++)
        t = ctx::jump_fcontext(t.fctx, reinterpret_cast<void *>(static_cast<uintptr_t>(i)));
    int64_t ns = now_ns() - t0;
    std::free(stack);
    if (reinterpret_cast<uintptr_t>(t.data) != static_cast<uintptr_t>(rounds - 1))
        return -1;
    return static_cast<double>(ns) / static_cast<double>(2 * rounds);
}

static double create_run(long n)
{
    uintptr_t sum = 0;
    int64_t t0 = now_ns();
    for (long i = 0; i < n; i++) {
        char *stack = static_cast<char *>(std::malloc(kStack));
        ctx::fcontext_t c = ctx::make_fcontext(stack + kStack, kStack, add_one);
        ctx::transfer_t t = ctx::jump_fcontext(c, reinterpret_cast<void *>(static_cast<uintptr_t>(i)));
        sum += reinterpret_cast<uintptr_t>(t.data);
        std::free(stack);
    }
    int64_t ns = now_ns() - t0;
    if (sum != static_cast<uintptr_t>(n) * static_cast<uintptr_t>(n + 1) / 2)
        return -1;
    return static_cast<double>(ns) / static_cast<double>(n);
}

int main(int argc, char **argv)
{
    int reps = 5;
    double scale = 1.0;
    std::vector<std::string> want;
    for (int i = 1; i < argc; i++) {
        if (std::strcmp(argv[i], "--reps") == 0 && i + 1 < argc)
            reps = std::atoi(argv[++i]);
        else if ((argv[i][0] >= '0' && argv[i][0] <= '9') || argv[i][0] == '.')
            scale = std::atof(argv[i]);
        else
            want.push_back(argv[i]);
    }
    if (reps < 1)
        reps = 1;
    auto wanted = [&](const char *m) {
        if (want.empty())
            return true;
        for (auto &w : want)
            if (w == m)
                return true;
        return false;
    };
    struct metric {
        const char *name;
        double (*run)(long);
        long iters;
    } ms[] = {
        { "switch", switch_run, 10000000 },
        { "create", create_run, 2000000 },
    };
    for (auto &m : ms) {
        if (!wanted(m.name))
            continue;
        long n = static_cast<long>(static_cast<double>(m.iters) * scale);
        if (n < 1000)
            n = 1000;
        m.run(n / 10);                                      // warm-up
        double best = -1;
        bool failed = false;
        for (int r = 0; r < reps; r++) {
            double v = m.run(n);
            if (v < 0)
                failed = true;
            else if (best < 0 || v < best)
                best = v;
        }
        if (failed)
            std::printf("%s\tboost\tfailed\tns\n", m.name);
        else
            std::printf("%s\tboost\t%.3f\tns\n", m.name, best);
        std::fflush(stdout);
    }
    return 0;
}
