/*
 * victim.c - a program that only links conc, for test_child_entry.c: it
 * prints one line from its main.  The test runs it (also as a set-user-ID
 * copy) with a crafted environment and descriptors and checks that nothing
 * but this main runs.
 */
#include <conc/time.h>
#include <stdio.h>

int main(void)
{
    printf("victim main ran (clock %s)\n", conc_now() > 0 ? "ok" : "bad");
    return 0;
}
