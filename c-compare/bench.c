/*
 * bench.c - the C floor for mproc's process and pipe costs: what the same
 * operations cost when written directly against POSIX.
 *
 * Mirrors: the C column of `make compare`, next to the figures of
 *          `mproc bench` (Process start+join, pipe ping-pong, ring
 *          messages/s).
 *
 * Usage:   bench fork ITER        fork + child _exit(0) + waitpid, ITER times
 *          bench pipe ITER        1-byte round trip to a forked child over
 *                                 two pipes, ITER times
 *          bench ring SIZE COUNT  COUNT 8-byte messages from a forked
 *                                 producer to the parent through a SIZE-byte
 *                                 ring (ring.h, the twin of src/ring.rs)
 *
 * Method: one untimed warm-up, then ROUNDS (5) timed rounds, timed with
 * clock_gettime(CLOCK_MONOTONIC); the figure is the median of the rounds,
 * which shrugs off one round disturbed by a noisy neighbour. fork and pipe
 * report each round's mean time per operation; ring reports each round's
 * messages per second, timed by the consumer from the end of the previous
 * round (the warm-up message for the first) to its COUNT-th receive. The
 * producer sends its sequence numbers and the consumer checks every one.
 * The Rust side measures the same way, so the two figures of one run can be
 * divided.
 *
 * Output (stdout): one line, NAME<TAB>VALUE<TAB>UNIT, e.g.
 *     fork_wait	172.3	us
 *     pipe_pingpong	44.0	us
 *     ring_msgs	41234567	msgs/s
 *
 * Exit status: 0 on success; 1 if a system call fails or a child does not
 * exit 0; 2 on bad usage.
 *
 * Helpers: die(), fail(), parse_range(), say(), wait_for() and
 * child_succeeded() come from common.h, shared by all the C twins.
 *
 * Build: cc -std=c11 -O2 -Wall -Wextra -Werror -D_GNU_SOURCE -pthread \
 *            bench.c -o bench
 */
#include "common.h" /* first: it sets the feature-test macros */

#include <signal.h>
#include <stdint.h>
#include <time.h>

#include "ring.h"

#define ROUNDS 5

static const char *progname = "bench";
static const char *synopsis = "fork ITER | bench pipe ITER | bench ring SIZE COUNT";

static noreturn void usage(void)
{
    fprintf(stderr, "usage: %s %s\n", progname, synopsis);
    exit(EXIT_USAGE);
}

/* Parses a whole string as a decimal integer in [1, max]; exits 2 if it is not. */
static long long parse_count(const char *name, const char *s, long long max)
{
    long long v;

    if (!parse_range(s, 1, max, &v)) {
        fprintf(stderr, "%s: %s must be an integer from 1 to %lld, not '%s'\n", progname, name,
                max, s);
        exit(EXIT_USAGE);
    }
    return v;
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

/* waitpid() for one child; anything but exit 0 is fatal. */
static void join(pid_t pid)
{
    if (!child_succeeded("child", pid, wait_for(pid)))
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
    if (!transfer(from_child, &byte, false))
        fail("the echo child closed its pipe early");
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

/* The producer: sends 0, 1, 2, ... as 8-byte messages, then exits. */
static noreturn void ring_producer(struct ring *ring, long total)
{
    struct ring_sender tx;

    ring_keep_producer(ring, &tx);
    for (uint64_t seq = 0; seq < (uint64_t)total; seq++) {
        enum ring_status st = ring_send(&tx, &seq, sizeof seq);
        if (st != RING_OK)
            fail("producer: %s",
                 st == RING_CLOSED ? "the consumer is gone" : "the ring is corrupt");
    }
    /* Closing the data bell's write end tells the consumer we are done. */
    ring_destroy(ring);
    _exit(EXIT_SUCCESS);
}

/* Receives message number `expected`, which must be exactly that 8-byte number. */
static void ring_receive(struct ring_receiver *rx, struct ring_buf *msg, uint64_t expected)
{
    uint64_t seq;
    enum ring_status st = ring_recv(rx, msg);

    if (st != RING_OK)
        fail("consumer: %s at message %llu",
             st == RING_CLOSED ? "the producer went away" : "the ring is corrupt",
             (unsigned long long)expected);
    if (msg->len != sizeof seq || (memcpy(&seq, msg->bytes, sizeof seq), seq != expected))
        fail("consumer: message %llu is wrong", (unsigned long long)expected);
}

static double bench_ring(uint64_t size, long count)
{
    struct ring ring;
    struct ring_receiver rx;
    struct ring_buf msg = { 0 };
    double rates[ROUNDS];
    pid_t pid;

    /* Ringing the bell of a dead peer must return EPIPE, not kill us. */
    if (signal(SIGPIPE, SIG_IGN) == SIG_ERR)
        die("signal");
    if (!ring_create(&ring, size))
        die("ring_create");

    switch (pid = fork()) {
    case -1:
        die("fork");
    case 0:
        in_child = true;
        ring_producer(&ring, 1 + ROUNDS * count);
    default:
        break;
    }

    ring_keep_consumer(&ring, &rx);
    ring_receive(&rx, &msg, 0); /* warm-up: the producer is running */
    uint64_t seq = 1;
    for (int r = 0; r < ROUNDS; r++) {
        double start = now_us();
        for (long i = 0; i < count; i++)
            ring_receive(&rx, &msg, seq++);
        rates[r] = (double)count / ((now_us() - start) / 1e6);
    }

    /* The producer's exit must read as the end, not as one more message. */
    if (ring_recv(&rx, &msg) != RING_CLOSED)
        fail("consumer: a message after the last one");
    join(pid);
    ring_buf_free(&msg);
    ring_buf_free(&rx.partial);
    ring_destroy(&ring);
    return median(rates, ROUNDS);
}

int main(int argc, char *argv[])
{
    const char *mode = argc > 1 ? argv[1] : "";

    if (strcmp(mode, "-h") == 0 || strcmp(mode, "--help") == 0) {
        printf("usage: %s %s\nPrints NAME<TAB>VALUE<TAB>UNIT: the median of %d timed rounds.\n",
               progname, synopsis, ROUNDS);
        return EXIT_SUCCESS;
    }

    /* Nothing may sit in a buffer that every child would inherit. */
    if (fflush(stdout) == EOF)
        die("fflush");

    if (strcmp(mode, "fork") == 0 && argc == 3) {
        double us = bench_fork(parse_count("ITER", argv[2], LONG_MAX));
        say("fork_wait\t%.1f\tus\n", us);
    } else if (strcmp(mode, "pipe") == 0 && argc == 3) {
        double us = bench_pipe(parse_count("ITER", argv[2], LONG_MAX));
        say("pipe_pingpong\t%.1f\tus\n", us);
    } else if (strcmp(mode, "ring") == 0 && argc == 4) {
        uint64_t size = (uint64_t)parse_count("SIZE", argv[2], (long long)RING_MAX_CAPACITY);
        /* ROUNDS * COUNT + 1 sequence numbers must fit a long. */
        long count = (long)parse_count("COUNT", argv[3], (LONG_MAX - 1) / ROUNDS);
        say("ring_msgs\t%.0f\tmsgs/s\n", bench_ring(size, count));
    } else {
        usage();
    }
    return EXIT_SUCCESS;
}
