/*
 * bench.c - the C floor for mproc's process and pipe costs: what the same
 * operations cost when written directly against POSIX.
 *
 * Mirrors: the C column of `make compare`, next to the process and pipe
 *          figures of `mproc bench` (Process start+join, pipe ping-pong).
 *
 * Usage:   bench fork ITER     fork + child _exit(0) + waitpid, ITER times
 *          bench pipe ITER     1-byte round trip to a forked child over two
 *                              pipes, ITER times
 *
 * Method: one untimed warm-up, then ROUNDS (5) timed rounds of ITER
 * operations each, timed with clock_gettime(CLOCK_MONOTONIC); the figure is
 * the median of the rounds' means, which shrugs off one round disturbed by a
 * noisy neighbour. The Rust side measures the same way, so the two figures
 * of one run can be divided.
 *
 * Output (stdout): one line, NAME<TAB>VALUE<TAB>UNIT, e.g.
 *     fork_wait	172.3	us
 *     pipe_pingpong	44.0	us
 *
 * Exit status: 0 on success; 1 if a system call fails or a child does not
 * exit 0; 2 on bad usage.
 *
 * Build: cc -std=c11 -O2 -Wall -Wextra -Werror -D_GNU_SOURCE -pthread \
 *            bench.c -o bench
 */
#if !defined(_GNU_SOURCE) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdnoreturn.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define EXIT_USAGE 2
#define ROUNDS 5

static const char *progname = "bench";
static bool in_child = false;

/*
 * Reports a failed call as "bench: call: reason" and exits 1. A child leaves
 * with _exit(): it must not run exit handlers or flush the parent's buffers.
 */
static noreturn void die(const char *call)
{
    int saved = errno;

    fprintf(stderr, "%s: %s: %s\n", progname, call, strerror(saved));
    if (in_child)
        _exit(EXIT_FAILURE);
    exit(EXIT_FAILURE);
}

static noreturn void usage(void)
{
    fprintf(stderr, "usage: %s fork ITER | %s pipe ITER\n", progname, progname);
    exit(EXIT_USAGE);
}

/* Parses a whole string as a positive decimal integer. */
static bool parse_count(const char *s, long *out)
{
    char *end;

    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < 1)
        return false;
    *out = v;
    return true;
}

static double now_us(void)
{
    struct timespec ts;

    if (clock_gettime(CLOCK_MONOTONIC, &ts) == -1)
        die("clock_gettime");
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static double median(double *values, int n)
{
    /* Insertion sort: n is ROUNDS. */
    for (int i = 1; i < n; i++) {
        double v = values[i];
        int j = i;
        for (; j > 0 && values[j - 1] > v; j--)
            values[j] = values[j - 1];
        values[j] = v;
    }
    return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

/* waitpid() for one child, retried on EINTR; anything but exit 0 is fatal. */
static void join(pid_t pid)
{
    int status;

    while (waitpid(pid, &status, 0) == -1) {
        if (errno != EINTR)
            die("waitpid");
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return;
    if (WIFEXITED(status))
        fprintf(stderr, "%s: child %ld exited with status %d\n", progname, (long)pid,
                WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        fprintf(stderr, "%s: child %ld killed by signal %d (%s)\n", progname, (long)pid,
                WTERMSIG(status), strsignal(WTERMSIG(status)));
    else
        fprintf(stderr, "%s: child %ld: unexpected wait status 0x%x\n", progname, (long)pid,
                (unsigned)status);
    exit(EXIT_FAILURE);
}

/* One fork + _exit(0) + waitpid: the floor under Process.start() + join(). */
static void fork_and_join(void)
{
    pid_t pid;

    switch (pid = fork()) {
    case -1:
        die("fork");
    case 0:
        _exit(EXIT_SUCCESS); /* nothing buffered: flushed before timing */
    default:
        join(pid);
    }
}

static double bench_fork(long iterations)
{
    double means[ROUNDS];

    fork_and_join(); /* warm-up */
    for (int r = 0; r < ROUNDS; r++) {
        double start = now_us();
        for (long i = 0; i < iterations; i++)
            fork_and_join();
        means[r] = (now_us() - start) / (double)iterations;
    }
    return median(means, ROUNDS);
}

/* Moves exactly one byte; false on end-of-file. */
static bool transfer(int fd, char *byte, bool writing)
{
    for (;;) {
        ssize_t n = writing ? write(fd, byte, 1) : read(fd, byte, 1);
        if (n == 1)
            return true;
        if (n == 0)
            return false;
        if (errno != EINTR)
            die(writing ? "write" : "read");
    }
}

/* The child echoes each byte back until the parent closes its pipe. */
static noreturn void echo_main(int from_parent, int to_parent)
{
    char byte;

    while (transfer(from_parent, &byte, false))
        transfer(to_parent, &byte, true);
    _exit(EXIT_SUCCESS);
}

static void round_trip(int to_child, int from_child)
{
    char byte = 'x';

    transfer(to_child, &byte, true);
    if (!transfer(from_child, &byte, false)) {
        fprintf(stderr, "%s: the echo child closed its pipe early\n", progname);
        exit(EXIT_FAILURE);
    }
}

static double bench_pipe(long iterations)
{
    int down[2]; /* parent -> child */
    int up[2];   /* child -> parent */
    double means[ROUNDS];
    pid_t pid;

    if (pipe(down) == -1 || pipe(up) == -1)
        die("pipe");

    switch (pid = fork()) {
    case -1:
        die("fork");
    case 0:
        in_child = true;
        if (close(down[1]) == -1) /* write end of down: the parent's */
            die("close");
        if (close(up[0]) == -1) /* read end of up: the parent's */
            die("close");
        echo_main(down[0], up[1]);
    default:
        break;
    }

    if (close(down[0]) == -1) /* read end of down: the child's */
        die("close");
    if (close(up[1]) == -1) /* write end of up: the child's */
        die("close");

    round_trip(down[1], up[0]); /* warm-up */
    for (int r = 0; r < ROUNDS; r++) {
        double start = now_us();
        for (long i = 0; i < iterations; i++)
            round_trip(down[1], up[0]);
        means[r] = (now_us() - start) / (double)iterations;
    }

    /* End-of-file tells the child to exit; then join it. */
    if (close(down[1]) == -1)
        die("close");
    if (close(up[0]) == -1)
        die("close");
    join(pid);
    return median(means, ROUNDS);
}

int main(int argc, char *argv[])
{
    long iterations;
    const char *name;
    double value;

    if (argc == 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
        printf("usage: %s fork ITER | %s pipe ITER\n"
               "Prints NAME<TAB>VALUE<TAB>UNIT: the median of %d rounds' mean.\n",
               progname, progname, ROUNDS);
        return EXIT_SUCCESS;
    }
    if (argc != 3)
        usage();
    if (!parse_count(argv[2], &iterations)) {
        fprintf(stderr, "%s: ITER must be a positive integer, not '%s'\n", progname, argv[2]);
        return EXIT_USAGE;
    }

    /* Nothing may sit in a buffer that every child would inherit. */
    if (fflush(stdout) == EOF)
        die("fflush");

    if (strcmp(argv[1], "fork") == 0) {
        name = "fork_wait";
        value = bench_fork(iterations);
    } else if (strcmp(argv[1], "pipe") == 0) {
        name = "pipe_pingpong";
        value = bench_pipe(iterations);
    } else {
        fprintf(stderr, "%s: unknown benchmark '%s'\n", progname, argv[1]);
        usage();
    }

    if (printf("%s\t%.1f\tus\n", name, value) < 0)
        die("printf");
    if (fflush(stdout) == EOF)
        die("fflush");
    return EXIT_SUCCESS;
}
