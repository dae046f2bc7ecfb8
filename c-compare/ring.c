/*
 * ring.c - two processes pass messages through the shared-memory ring of
 * ring.h, the C twin of src/ring.rs; the consumer checks every byte.
 *
 * Mirrors: mproc::ring (src/ring.rs), the transport under the pool of
 *          `mproc cube` and what `mproc bench ring` measures; bench.c's
 *          `bench ring` mode times the same code.
 *
 * Usage:   ring [--capacity BYTES] [--count N]
 *              BYTES from 1 to 1073741824, rounded up to a power of two of
 *              at least 1024, default 4096; N from 0 to 10000000, default 1000
 *
 * A forked producer sends N messages whose lengths cycle through 0, 1, 7, 8,
 * 9, 64, 1000 and sizes around the capacity: one frame that fills the ring
 * exactly, then messages that do not fit and are streamed in fragments (up
 * to three times the capacity). Each byte is a function of the message's
 * number and position. The parent receives them, checks length, content and
 * order, then checks that the producer's exit reads as end-of-file.
 *
 * Output (stdout), e.g. for the defaults:
 *     ring: 1000 messages, 2322312 bytes, through a 4096-byte ring
 *     ring: every message arrived whole and in order; 272 were larger than the ring and came in fragments
 *     ring: after the last message, the producer's exit read as end-of-file
 *
 * Exit status: 0 on success; 1 if a system call fails, a message is wrong,
 * the ring reports corruption or the producer does not exit 0; 2 on bad
 * usage.
 *
 * Helpers: die(), fail(), usage_error(), parse_range(), say(), wait_for()
 * and child_succeeded() come from common.h, shared by all the C twins.
 *
 * Build: cc -std=c11 -O2 -Wall -Wextra -Werror -D_GNU_SOURCE -pthread \
 *            ring.c -o ring
 */
#include "common.h" /* first: it sets the feature-test macros */

#include <signal.h>
#include <stdint.h>

#include "ring.h"

#define MAX_COUNT 10000000L

static const char *progname = "ring";
static const char *synopsis = "[--capacity BYTES] [--count N]";

/* The length of message number seq: small ones, then sizes around C. */
static size_t message_len(uint64_t seq, uint64_t capacity)
{
    const uint64_t lengths[] = {
        0, 1, 7, 8, 9, 64, 1000,
        capacity - RING_FRAME_HEADER,     /* a frame of exactly C bytes: still one frame */
        capacity - RING_FRAME_HEADER + 1, /* one byte too many: streamed */
        capacity,
        3 * capacity + 5,
    };
    return (size_t)lengths[seq % (sizeof lengths / sizeof lengths[0])];
}

static unsigned char message_byte(uint64_t seq, size_t i)
{
    return (unsigned char)(seq * 131 + i * 7 + (i >> 8));
}

static noreturn void producer_main(struct ring *ring, long long count)
{
    struct ring_sender tx;
    unsigned char *msg = malloc(message_len(10, ring->capacity));

    if (msg == NULL)
        die("malloc");
    ring_keep_producer(ring, &tx);
    for (long long seq = 0; seq < count; seq++) {
        size_t len = message_len((uint64_t)seq, ring->capacity);
        for (size_t i = 0; i < len; i++)
            msg[i] = message_byte((uint64_t)seq, i);
        switch (ring_send(&tx, msg, len)) {
        case RING_OK:
            break;
        case RING_CLOSED:
            fail("producer: the consumer is gone");
        case RING_CORRUPT:
            fail("producer: the ring's indices are corrupt");
        }
    }
    free(msg);
    /* Closing the data bell's write end is what tells the consumer we are done. */
    ring_destroy(ring);
    _exit(EXIT_SUCCESS);
}

/* Checks message seq; says what is wrong and exits 1 if anything is. */
static void check_message(uint64_t seq, const struct ring_buf *msg, uint64_t capacity)
{
    size_t want = message_len(seq, capacity);

    if (msg->len != want)
        fail("message %llu: expected %zu bytes, got %zu", (unsigned long long)seq, want,
             msg->len);
    for (size_t i = 0; i < want; i++) {
        if (msg->bytes[i] != message_byte(seq, i))
            fail("message %llu: wrong byte at %zu", (unsigned long long)seq, i);
    }
}

int main(int argc, char *argv[])
{
    long long capacity = 4096;
    long long count = 1000;

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char *value;
        long long *target;
        long long max;

        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            printf("usage: %s %s\n"
                   "A child sends N checked messages through a shared-memory ring\n"
                   "(default 1000 messages, 4096 bytes).\n",
                   progname, synopsis);
            return EXIT_SUCCESS;
        } else if (strcmp(arg, "--capacity") == 0 || strcmp(arg, "--count") == 0) {
            if (i + 1 == argc)
                usage_error("missing value for", arg);
            value = argv[++i];
        } else if (strncmp(arg, "--capacity=", 11) == 0 || strncmp(arg, "--count=", 8) == 0) {
            value = strchr(arg, '=') + 1;
        } else {
            usage_error("unexpected argument", arg);
        }
        bool is_capacity = strncmp(arg, "--capacity", 10) == 0;
        target = is_capacity ? &capacity : &count;
        max = is_capacity ? (long long)RING_MAX_CAPACITY : MAX_COUNT;
        if (!parse_range(value, is_capacity ? 1 : 0, max, target))
            usage_error(is_capacity ? "--capacity must be from 1 to 1073741824, not"
                                    : "--count must be from 0 to 10000000, not",
                        value);
    }

    /* Ringing the bell of a dead peer must return EPIPE, not kill us. */
    if (signal(SIGPIPE, SIG_IGN) == SIG_ERR)
        die("signal");

    struct ring ring;
    if (!ring_create(&ring, (uint64_t)capacity))
        die("ring_create");

    if (fflush(stdout) == EOF)
        die("fflush");
    pid_t producer;
    switch (producer = fork()) {
    case -1:
        die("fork");
    case 0:
        in_child = true;
        producer_main(&ring, count);
    default:
        break;
    }

    struct ring_receiver rx;
    struct ring_buf msg = { 0 };
    unsigned long long bytes = 0, streamed = 0;
    bool clean_end = false;

    ring_keep_consumer(&ring, &rx);
    for (long long seq = 0; seq <= count; seq++) {
        enum ring_status st = ring_recv(&rx, &msg);

        if (st == RING_CORRUPT)
            fail("consumer: the ring is corrupt");
        if (seq == count) {
            /* One receive past the last message: it must report the end. */
            clean_end = st == RING_CLOSED;
            if (!clean_end)
                fprintf(stderr, "%s: a message arrived after the last one\n", progname);
            break;
        }
        if (st == RING_CLOSED) {
            fprintf(stderr, "%s: the producer went away after %lld of %lld messages\n",
                    progname, seq, count);
            break;
        }
        check_message((uint64_t)seq, &msg, ring.capacity);
        bytes += msg.len;
        if (ring_frame_len(msg.len) > ring.capacity)
            streamed++;
    }

    bool producer_ok = child_succeeded("producer", producer, wait_for(producer));
    uint64_t actual_capacity = ring.capacity;
    ring_buf_free(&msg);
    ring_buf_free(&rx.partial);
    ring_destroy(&ring);
    if (!producer_ok || !clean_end)
        return EXIT_FAILURE;

    say("ring: %lld messages, %llu bytes, through a %llu-byte ring\n"
        "ring: every message arrived whole and in order; %llu were larger than the "
        "ring and came in fragments\n"
        "ring: after the last message, the producer's exit read as end-of-file\n",
        count, bytes, (unsigned long long)actual_capacity, streamed);
    return EXIT_SUCCESS;
}
