/*
 * ring.h - the C twin of src/ring.rs: a single-producer single-consumer byte
 * ring in shared memory carrying framed messages between two processes, with
 * pipes as doorbells and as death detectors.
 *
 * Used by ring.c (which checks it end to end) and bench.c (`bench ring`).
 * It is a header of static functions, not a program: the Makefile builds
 * only the .c files in this directory.
 *
 * Same memory layout and same algorithm as src/ring.rs; its module doc is
 * the reference, and this file follows it field by field:
 *
 *   offset 0      tail: u64               written by the producer only
 *   offset 128    head: u64               written by the consumer only
 *   offset 256    consumer_sleeping: u64  non-zero while the consumer may sleep
 *   offset 384    producer_sleeping: u64  non-zero while the producer may sleep
 *   offset 512    data: C bytes           byte counter i at data[i & (C-1)]
 *
 * Each field has its own 128-byte line, so the two writers never share a
 * cache line. C is a power of two from 1 KiB to 1 GiB. head and tail are byte
 * counters that only grow; tail - head bytes are readable. A frame starts at
 * a multiple of 8: len: u32, flags: u32 (bit 0 = MORE: another fragment of
 * the same message follows), the payload, then 0-7 padding bytes. A message
 * whose frame fits in C goes as one frame; a larger one is streamed in
 * fragments of at least C/4 bytes, each flagged MORE except the last.
 *
 * Protocol. Producer: copy the frame in at tail, store tail (release), load
 * consumer_sleeping; if it is non-zero and not the value it last rang for,
 * write a byte to the data bell. Consumer: load tail (acquire), copy the
 * frame out at head, store head (release; lazily, a quarter of the ring at a
 * time, when the ring runs dry, or at once when a relaxed peek shows the
 * producer asleep), load producer_sleeping; if it is non-zero and not the
 * value it last rang for, write a byte to the space bell. Each
 * store-then-load pair is seq_cst (see ring_publish() and ring_publish_head()
 * below). A side with nothing to do spins RING_SPIN_LIMIT times, then stores
 * a new sleep number (1, 2, 3, ...: never 0, never reused) in its own
 * *_sleeping word, looks at the ring once more, polls its bell, stores 0 and
 * drains the bell. The sleep number lets the peer ring once per sleep rather
 * than once per message while the sleeper wakes up. Only the sleeper clears
 * its own word: a peer that cleared it could miss the next sleep and never
 * ring.
 *
 * Death. Only the producer holds the data bell's write end and only the
 * consumer the space bell's, so a peer's exit reads as end-of-file on the
 * survivor's bell: a receiver then drains the ring and reports RING_CLOSED.
 *
 * What the C twin leaves out: the Rust Sender's outbox (enqueue/flush), the
 * timeouts, and the time bound on spinning (Rust stops after 2,000 pauses or
 * 20 us, whichever comes first; here it is 2,000 pauses). Only the blocking
 * send and receive are here.
 *
 * Requirements on the program: SIGPIPE ignored (ringing the bell of a dead
 * peer must return EPIPE, not kill the ringer; src/sys/bell.rs blocks the
 * signal around the write instead), and each process closing the half it
 * does not use right after fork (ring_keep_producer / ring_keep_consumer).
 * Failed system calls are fatal: they go to die() of common.h, which
 * names the including program.
 */
#ifndef MPROC_RING_H
#define MPROC_RING_H

#include "common.h" /* die(); first: it sets the feature-test macros */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdnoreturn.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#if !defined(MAP_ANONYMOUS) && defined(MAP_ANON)
#define MAP_ANONYMOUS MAP_ANON /* older macOS spells it MAP_ANON */
#endif

#define RING_HEADER_LEN 512
#define RING_FRAME_HEADER 8u
#define RING_FLAG_MORE 1u
#define RING_MIN_CAPACITY ((uint64_t)1 << 10)
#define RING_MAX_CAPACITY ((uint64_t)1 << 30)
/* Busy-wait rounds before sleeping on a bell (~2,000 keeps nearly all the
 * spinning speed without burning a core when idle; the measurements are in
 * mproc(7), "Doorbells: who wakes whom"). */
#define RING_SPIN_LIMIT 2000

/* The shared header at offset 0 of the mapping, as in src/ring.rs. */
struct ring_header {
    /* Bytes ever published. Producer only; never decreases;
     * head <= tail <= head + capacity. Bytes below it are complete frames. */
    alignas(128) _Atomic uint64_t tail;
    /* Bytes ever consumed. Consumer only; never decreases; head <= tail.
     * Bytes below it may be overwritten by the producer. */
    alignas(128) _Atomic uint64_t head;
    /* 0 while the consumer is awake; while it is about to sleep or asleep on
     * the data bell, the number of that sleep (counting from 1, so each sleep
     * has its own value). Set and cleared only by the consumer. */
    alignas(128) _Atomic uint64_t consumer_sleeping;
    /* The same for the producer asleep on the space bell. Set and cleared
     * only by the producer. */
    alignas(128) _Atomic uint64_t producer_sleeping;
};

_Static_assert(sizeof(struct ring_header) == RING_HEADER_LEN, "ring header is 512 bytes");
_Static_assert(offsetof(struct ring_header, head) == 128, "head at offset 128");
_Static_assert(offsetof(struct ring_header, consumer_sleeping) == 256, "sleep word at offset 256");
_Static_assert(offsetof(struct ring_header, producer_sleeping) == 384, "sleep word at offset 384");
_Static_assert(sizeof(_Atomic uint64_t) == 8,
               "atomics have the plain integer's size, as Rust's AtomicU64");
/* Another process shares these atomics: they must not hide a lock. */
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2 && ATOMIC_LONG_LOCK_FREE == 2,
               "64-bit atomics must be lock-free");

enum ring_status {
    RING_OK = 0,
    RING_CLOSED,  /* the peer is gone (and, for a receiver, the ring is drained) */
    RING_CORRUPT, /* the shared indices or a frame make no sense */
};

/* One ring, as each process sees it after fork. */
struct ring {
    struct ring_header *header; /* the mapping, page-aligned */
    unsigned char *data;        /* header + RING_HEADER_LEN */
    uint64_t capacity;          /* a power of two; kept locally, not in shared memory */
    size_t map_len;
    int data_bell[2];  /* producer rings [1], consumer sleeps on [0]; -1 when closed */
    int space_bell[2]; /* consumer rings [1], producer sleeps on [0]; -1 when closed */
};

/* The producer's private state. */
struct ring_sender {
    struct ring *ring;
    uint64_t tail;        /* includes frames written but not yet published */
    uint64_t published;   /* the tail the consumer can see */
    uint64_t cached_head; /* a head loaded earlier: free space is at least what it shows */
    uint64_t sleeps;      /* our sleeps on the space bell so far (the last number announced) */
    uint64_t rang_for;    /* the consumer's sleep number we last rang the data bell for */
    bool peer_gone;       /* the space bell read end-of-file, or ringing failed */
};

/* A growable message buffer, reused across receives. */
struct ring_buf {
    unsigned char *bytes;
    size_t len;
    size_t cap;
};

/* The consumer's private state. */
struct ring_receiver {
    struct ring *ring;
    uint64_t head;        /* bytes consumed */
    uint64_t released;    /* the head last stored in shared memory: given back
                           * once a quarter of the ring piles up, when the ring
                           * runs dry, or at once if the producer sleeps */
    uint64_t cached_tail; /* a tail loaded earlier: frames below it are ours to read */
    uint64_t sleeps;      /* our sleeps on the data bell so far (the last number announced) */
    uint64_t rang_for;    /* the producer's sleep number we last rang the space bell for */
    struct ring_buf partial; /* fragments of a streamed message received so far */
    bool in_message;      /* a MORE fragment came: partial holds a message start */
    bool producer_gone;   /* the data bell read end-of-file */
    bool poisoned;        /* a corrupt frame was seen; every later call says so */
};

static inline void ring_cpu_relax(void)
{
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_ia32_pause();
#elif defined(__GNUC__) && defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline uint64_t ring_frame_len(uint64_t len)
{
    return RING_FRAME_HEADER + (len + 7) / 8 * 8;
}

static inline void ring_close_fd(int *fd)
{
    if (*fd != -1 && close(*fd) == -1)
        die("close");
    *fd = -1;
}

/*
 * Maps a ring of at least `capacity` bytes (rounded up to a power of two, at
 * least 1 KiB) and makes its two bells. Call before fork. False (with errno
 * EINVAL) for 0 or more than 1 GiB.
 */
static inline bool ring_create(struct ring *ring, uint64_t capacity)
{
    if (capacity == 0 || capacity > RING_MAX_CAPACITY) {
        errno = EINVAL;
        return false;
    }
    uint64_t rounded = RING_MIN_CAPACITY;
    while (rounded < capacity)
        rounded *= 2;

    ring->capacity = rounded;
    ring->map_len = RING_HEADER_LEN + (size_t)rounded;
    /* MAP_SHARED: a MAP_PRIVATE mapping would become two copies at fork. */
    void *map = mmap(NULL, ring->map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                     -1, 0);
    if (map == MAP_FAILED)
        die("mmap");
    ring->header = map;
    ring->data = (unsigned char *)map + RING_HEADER_LEN;
    /* The mapping is zero-filled; atomic_init makes that official. */
    atomic_init(&ring->header->tail, 0);
    atomic_init(&ring->header->head, 0);
    atomic_init(&ring->header->consumer_sleeping, 0);
    atomic_init(&ring->header->producer_sleeping, 0);

    if (pipe(ring->data_bell) == -1 || pipe(ring->space_bell) == -1)
        die("pipe");
    /* All four ends non-blocking: a full bell already means a wake-up is
     * pending, and a bell is drained until EAGAIN (waiting is poll's job). */
    int fds[4] = { ring->data_bell[0], ring->data_bell[1], ring->space_bell[0],
                   ring->space_bell[1] };
    for (int i = 0; i < 4; i++) {
        int flags = fcntl(fds[i], F_GETFL);
        if (flags == -1 || fcntl(fds[i], F_SETFL, flags | O_NONBLOCK) == -1)
            die("fcntl");
    }
    return true;
}

/* After fork, in the producer: drop the consumer's half. */
static inline void ring_keep_producer(struct ring *ring, struct ring_sender *tx)
{
    ring_close_fd(&ring->data_bell[0]);  /* read end: the consumer sleeps on it */
    ring_close_fd(&ring->space_bell[1]); /* write end: held only by the consumer,
                                            so its exit reads as end-of-file */
    *tx = (struct ring_sender){ .ring = ring };
}

/* After fork, in the consumer: drop the producer's half. */
static inline void ring_keep_consumer(struct ring *ring, struct ring_receiver *rx)
{
    ring_close_fd(&ring->data_bell[1]);  /* write end: held only by the producer,
                                            so its exit reads as end-of-file */
    ring_close_fd(&ring->space_bell[0]); /* read end: the producer sleeps on it */
    *rx = (struct ring_receiver){ .ring = ring };
}

/* Unmaps the ring and closes whatever bell ends this process still holds. */
static inline void ring_destroy(struct ring *ring)
{
    ring_close_fd(&ring->data_bell[0]);
    ring_close_fd(&ring->data_bell[1]);
    ring_close_fd(&ring->space_bell[0]);
    ring_close_fd(&ring->space_bell[1]);
    if (munmap(ring->header, ring->map_len) == -1)
        die("munmap");
    ring->header = NULL;
}

/* ---------------------------------------------------------------------------
 * bells */

enum ring_rang { RING_RUNG, RING_ALREADY_PENDING, RING_PEER_GONE };

/* Writes one byte to a bell's non-blocking write end. */
static inline enum ring_rang ring_bell_ring(int fd)
{
    const unsigned char byte = 1;

    for (;;) {
        if (write(fd, &byte, 1) == 1)
            return RING_RUNG;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return RING_ALREADY_PENDING; /* full: a wake-up is already waiting */
        if (errno == EPIPE)
            return RING_PEER_GONE;
        die("write bell");
    }
}

/* Empties a bell's non-blocking read end. False means end-of-file: peer gone. */
static inline bool ring_bell_drain(int fd)
{
    unsigned char scratch[64];

    for (;;) {
        ssize_t n = read(fd, scratch, sizeof scratch);
        if (n > 0)
            continue;
        if (n == 0)
            return false;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return true;
        die("read bell");
    }
}

/* Sleeps until the bell is readable (rung or hung up). */
static inline void ring_bell_wait(int fd)
{
    struct pollfd pfd = { .fd = fd, .events = POLLIN };

    while (poll(&pfd, 1, -1) == -1) {
        if (errno != EINTR)
            die("poll");
    }
}

/* ---------------------------------------------------------------------------
 * copies in and out of the data area (plain memory, ordered by the atomics) */

/* Copies len bytes to byte counter pos, wrapping at the end. The producer
 * owns [pos, pos + len): it lies between the published tail and head + C. */
static inline void ring_write_at(struct ring *ring, uint64_t pos, const void *src, size_t len)
{
    size_t offset = (size_t)(pos & (ring->capacity - 1));
    size_t first = len < ring->capacity - offset ? len : (size_t)ring->capacity - offset;

    if (len == 0)
        return; /* src may be NULL, which memcpy never accepts */
    memcpy(ring->data + offset, src, first);
    memcpy(ring->data, (const unsigned char *)src + first, len - first);
}

/* Copies len bytes at byte counter pos out. The consumer owns them: they lie
 * between its head and the tail it loaded with acquire. */
static inline void ring_read_at(struct ring *ring, uint64_t pos, void *dst, size_t len)
{
    size_t offset = (size_t)(pos & (ring->capacity - 1));
    size_t first = len < ring->capacity - offset ? len : (size_t)ring->capacity - offset;

    if (len == 0)
        return; /* dst may be NULL (an empty buffer), which memcpy never accepts */
    memcpy(dst, ring->data + offset, first);
    memcpy((unsigned char *)dst + first, ring->data, len - first);
}

/* ---------------------------------------------------------------------------
 * the producer */

/* Free bytes at our tail; loads the shared head only when the cached one
 * does not already show `want` free. */
static inline enum ring_status ring_free_space(struct ring_sender *tx, uint64_t want,
                                               uint64_t *free)
{
    uint64_t capacity = tx->ring->capacity;

    *free = capacity - (tx->tail - tx->cached_head);
    if (*free >= want)
        return RING_OK;
    /* Acquire: pairs with the consumer's release store of head, so its copies
     * out of the bytes below head happen before we overwrite them. */
    uint64_t head = atomic_load_explicit(&tx->ring->header->head, memory_order_acquire);
    if (head < tx->cached_head || head > tx->published)
        return RING_CORRUPT;
    tx->cached_head = head;
    *free = capacity - (tx->tail - head);
    return RING_OK;
}

/* Writes one frame at our unpublished tail; frame_len(len) bytes there are free. */
static inline void ring_write_frame(struct ring_sender *tx, const void *payload, uint32_t len,
                                    uint32_t flags)
{
    unsigned char frame_header[RING_FRAME_HEADER];

    memcpy(frame_header, &len, 4); /* native-endian, as the Rust side */
    memcpy(frame_header + 4, &flags, 4);
    /* tail is a multiple of 8 and C a multiple of 8: the header never wraps. */
    ring_write_at(tx->ring, tx->tail, frame_header, sizeof frame_header);
    ring_write_at(tx->ring, tx->tail + RING_FRAME_HEADER, payload, len);
    tx->tail += ring_frame_len(len);
}

/* Makes the frames written so far visible, and wakes the consumer if it sleeps. */
static inline enum ring_status ring_publish(struct ring_sender *tx)
{
    struct ring_header *header = tx->ring->header;

    if (tx->tail == tx->published)
        return RING_OK;
    /* seq_cst store: its release half publishes the frame bytes to a consumer
     * that loads tail with acquire; its seq_cst half orders it before the load
     * of consumer_sleeping below, against the consumer's seq_cst store of that
     * sleep number then seq_cst load of tail (ring_receiver_prepare_wait). In
     * the one total order of those four operations either we see its sleep
     * number and ring, or the consumer sees our tail and does not sleep: no
     * lost wake-up. */
    atomic_store_explicit(&header->tail, tx->tail, memory_order_seq_cst);
    tx->published = tx->tail;
    uint64_t sleep = atomic_load_explicit(&header->consumer_sleeping, memory_order_seq_cst);
    if (sleep != 0 && sleep != tx->rang_for) {
        /* One byte per sleep: the consumer looks at the ring again after it
         * wakes, before it can sleep again (with a new number). */
        tx->rang_for = sleep;
        if (ring_bell_ring(tx->ring->data_bell[1]) == RING_PEER_GONE) {
            tx->peer_gone = true;
            return RING_CLOSED;
        }
    }
    return RING_OK;
}

/* Free bytes needed before the rest of a `total`-byte message, `sent` of it
 * already in the ring, can move. A streamed message waits for a quarter of
 * the ring, so its fragments stay large. */
static inline uint64_t ring_need(const struct ring_sender *tx, size_t total, size_t sent)
{
    uint64_t whole = ring_frame_len(total - sent);
    uint64_t quarter = tx->ring->capacity / 4;

    if (ring_frame_len(total) > tx->ring->capacity)
        return whole < quarter ? whole : quarter;
    return whole;
}

/* Writes as much of msg[*sent..] as fits now. Fragments are published at
 * once; a final frame is left for the caller to publish. *done says whether
 * the whole message is in the ring. */
static inline enum ring_status ring_push_some(struct ring_sender *tx, const unsigned char *msg,
                                              size_t len, size_t *sent, bool *done)
{
    for (;;) {
        size_t rest = len - *sent;
        uint64_t whole = ring_frame_len(rest);
        uint64_t free;
        enum ring_status st = ring_free_space(tx, whole, &free);

        if (st != RING_OK)
            return st;
        if (whole <= free) {
            ring_write_frame(tx, msg + *sent, (uint32_t)rest, 0);
            *sent = len;
            *done = true;
            return RING_OK;
        }
        if (free < ring_need(tx, len, *sent)) {
            *done = false;
            return RING_OK;
        }
        /* Streaming: free >= C/4 > 8 and a multiple of 8, so the fragment is
         * non-empty; whole > free makes it shorter than the rest. */
        uint32_t fragment = (uint32_t)(free - RING_FRAME_HEADER);
        ring_write_frame(tx, msg + *sent, fragment, RING_FLAG_MORE);
        *sent += fragment;
        if ((st = ring_publish(tx)) != RING_OK)
            return st;
    }
}

/* Announces a sleep (a new number in producer_sleeping) unless `need` bytes
 * are already free. */
static inline bool ring_sender_prepare_wait(struct ring_sender *tx, uint64_t need)
{
    struct ring_header *header = tx->ring->header;
    uint64_t sleep = ++tx->sleeps;

    /* seq_cst store then seq_cst load: the mirror of the consumer's head store
     * then producer_sleeping load (ring_publish_head): either it sees our
     * number and rings the space bell, or we see its head here. */
    atomic_store_explicit(&header->producer_sleeping, sleep, memory_order_seq_cst);
    uint64_t head = atomic_load_explicit(&header->head, memory_order_seq_cst);
    uint64_t used = tx->tail - head;
    /* A corrupt head also ends the wait: the next free-space check reports it. */
    if (used > tx->ring->capacity || tx->ring->capacity - used >= need) {
        /* Relaxed: a consumer that still reads our number rings once more at
         * most, which costs one spurious wake-up later, never a lost one. */
        atomic_store_explicit(&header->producer_sleeping, 0, memory_order_relaxed);
        return false;
    }
    return true;
}

/* Ends a wait: clears our sleep number (only we ever do) and drains the bell. */
static inline void ring_sender_finish_wait(struct ring_sender *tx)
{
    /* Relaxed: see ring_sender_prepare_wait. */
    atomic_store_explicit(&tx->ring->header->producer_sleeping, 0, memory_order_relaxed);
    if (!ring_bell_drain(tx->ring->space_bell[0]))
        tx->peer_gone = true;
}

/* Spins, then sleeps, until `need` bytes are free. */
static inline enum ring_status ring_wait_for_space(struct ring_sender *tx, uint64_t need)
{
    uint64_t free;
    enum ring_status st;

    for (int i = 0; i < RING_SPIN_LIMIT; i++) {
        if ((st = ring_free_space(tx, need, &free)) != RING_OK)
            return st;
        if (free >= need)
            return RING_OK;
        ring_cpu_relax();
    }
    for (;;) {
        if (tx->peer_gone)
            return RING_CLOSED;
        if (ring_sender_prepare_wait(tx, need)) {
            ring_bell_wait(tx->ring->space_bell[0]);
            ring_sender_finish_wait(tx);
        }
        if ((st = ring_free_space(tx, need, &free)) != RING_OK)
            return st;
        if (free >= need)
            return RING_OK;
    }
}

/*
 * Sends one message of any length, waiting (spinning, then sleeping) for
 * room. RING_CLOSED if the consumer is found gone: it is found when this call
 * has to wait or would wake it, so a message that fits into the ring of a
 * dead consumer may still return RING_OK (like data in a socket buffer).
 */
static inline enum ring_status ring_send(struct ring_sender *tx, const void *msg, size_t len)
{
    size_t sent = 0;
    bool done;
    enum ring_status st;

    if (tx->peer_gone)
        return RING_CLOSED;
    for (;;) {
        if ((st = ring_push_some(tx, msg, len, &sent, &done)) != RING_OK)
            return st;
        if ((st = ring_publish(tx)) != RING_OK)
            return st;
        if (done)
            return RING_OK;
        if ((st = ring_wait_for_space(tx, ring_need(tx, len, sent))) != RING_OK)
            return st;
    }
}

/* ---------------------------------------------------------------------------
 * the consumer */

static inline void ring_buf_reserve(struct ring_buf *buf, size_t extra)
{
    if (buf->cap - buf->len >= extra)
        return;
    size_t cap = buf->cap > 0 ? buf->cap : 64;
    while (cap - buf->len < extra)
        cap *= 2;
    unsigned char *bytes = realloc(buf->bytes, cap);
    if (bytes == NULL)
        die("realloc");
    buf->bytes = bytes;
    buf->cap = cap;
}

static inline void ring_buf_free(struct ring_buf *buf)
{
    free(buf->bytes);
    *buf = (struct ring_buf){ 0 };
}

/* Bytes published and not yet consumed; loads the shared tail only when
 * everything cached has been consumed. */
static inline enum ring_status ring_available(struct ring_receiver *rx, uint64_t *available)
{
    if (rx->cached_tail != rx->head) {
        *available = rx->cached_tail - rx->head;
        return RING_OK;
    }
    /* Acquire: pairs with the producer's seq_cst (hence release) store of
     * tail, so the frames below it are fully written before we read them. */
    uint64_t tail = atomic_load_explicit(&rx->ring->header->tail, memory_order_acquire);
    if (tail < rx->head || tail - rx->head > rx->ring->capacity || (tail - rx->head) % 8 != 0)
        return RING_CORRUPT;
    rx->cached_tail = tail;
    *available = tail - rx->head;
    return RING_OK;
}

/* Stores our head for the producer, waking it if it sleeps. */
static inline void ring_publish_head(struct ring_receiver *rx)
{
    struct ring_header *header = rx->ring->header;

    if (rx->released == rx->head)
        return;
    rx->released = rx->head;
    /* seq_cst store: its release half orders our copies out of the frame
     * before the producer reuses its bytes (it loads head with acquire); its
     * seq_cst half orders it before the load of producer_sleeping below,
     * against the producer's seq_cst sleep-number store then head load
     * (ring_sender_prepare_wait): one of us sees the other's store, so a
     * sleeping producer is always woken. */
    atomic_store_explicit(&header->head, rx->head, memory_order_seq_cst);
    uint64_t sleep = atomic_load_explicit(&header->producer_sleeping, memory_order_seq_cst);
    if (sleep != 0 && sleep != rx->rang_for) {
        /* One byte per sleep, as in ring_publish. A gone producer is not our
         * error: its bell will read end-of-file. */
        rx->rang_for = sleep;
        (void)ring_bell_ring(rx->ring->space_bell[1]);
    }
}

/* Consumes the frame at head. The space goes back to the producer a quarter
 * of the ring at a time (one store instead of one per frame), or at once if
 * the producer is asleep: the relaxed peek may see it late, which only
 * delays the wake-up to the next quarter or to the moment the ring runs dry,
 * where ring_publish_head's seq_cst store-then-load rules out a lost one. */
static inline void ring_release(struct ring_receiver *rx, uint64_t frame)
{
    rx->head += frame;
    bool producer_waits =
        atomic_load_explicit(&rx->ring->header->producer_sleeping, memory_order_relaxed) != 0;
    if (producer_waits || rx->head - rx->released >= rx->ring->capacity / 4)
        ring_publish_head(rx);
}

/* Appends the payload of the frame at pos to buf. */
static inline void ring_append_payload(struct ring_receiver *rx, uint64_t pos, size_t len,
                                       struct ring_buf *buf)
{
    ring_buf_reserve(buf, len);
    ring_read_at(rx->ring, pos + RING_FRAME_HEADER, buf->bytes + buf->len, len);
    buf->len += len;
}

/* Takes the next whole message into out (emptied first) if there is one,
 * without waiting; *got says whether one came. */
static inline enum ring_status ring_take_message(struct ring_receiver *rx, struct ring_buf *out,
                                                 bool *got)
{
    *got = false;
    for (;;) {
        uint64_t available;
        unsigned char frame_header[RING_FRAME_HEADER];
        uint32_t len, flags;

        if (ring_available(rx, &available) != RING_OK)
            return RING_CORRUPT;
        if (available == 0) {
            /* Dry: give back everything consumed before the caller sleeps. */
            ring_publish_head(rx);
            return RING_OK;
        }
        /* available is a non-zero multiple of 8: a whole header is there. */
        ring_read_at(rx->ring, rx->head, frame_header, sizeof frame_header);
        memcpy(&len, frame_header, 4);
        memcpy(&flags, frame_header + 4, 4);
        uint64_t frame = ring_frame_len(len);
        if (frame > rx->ring->capacity || frame > available || (flags & ~RING_FLAG_MORE) != 0)
            return RING_CORRUPT;

        bool more = (flags & RING_FLAG_MORE) != 0;
        if (!rx->in_message && !more) {
            /* The common case: a whole message in one frame. */
            out->len = 0;
            ring_append_payload(rx, rx->head, len, out);
            ring_release(rx, frame);
            *got = true;
            return RING_OK;
        }
        ring_append_payload(rx, rx->head, len, &rx->partial);
        ring_release(rx, frame);
        rx->in_message = more;
        if (!more) {
            /* Hand the message over and keep out's old allocation. */
            struct ring_buf whole = rx->partial;
            rx->partial = *out;
            rx->partial.len = 0;
            *out = whole;
            *got = true;
            return RING_OK;
        }
    }
}

/* Announces a sleep (a new number in consumer_sleeping) unless there is
 * something to take, or nothing will ever come. */
static inline bool ring_receiver_prepare_wait(struct ring_receiver *rx)
{
    struct ring_header *header = rx->ring->header;

    if (rx->producer_gone || rx->poisoned)
        return false;
    uint64_t sleep = ++rx->sleeps;
    /* seq_cst store then seq_cst load: against the producer's seq_cst tail
     * store then consumer_sleeping load (ring_publish), one of us sees the
     * other's store: either we see the new tail here, or it sees our number
     * and rings the data bell. */
    atomic_store_explicit(&header->consumer_sleeping, sleep, memory_order_seq_cst);
    if (atomic_load_explicit(&header->tail, memory_order_seq_cst) != rx->head) {
        /* Relaxed: a producer that still reads our number rings once more at
         * most, which costs one spurious wake-up later, never a lost one. */
        atomic_store_explicit(&header->consumer_sleeping, 0, memory_order_relaxed);
        return false;
    }
    return true;
}

/* Ends a wait: clears our sleep number (only we ever do) and drains the bell. */
static inline void ring_receiver_finish_wait(struct ring_receiver *rx)
{
    /* Relaxed: see ring_receiver_prepare_wait. */
    atomic_store_explicit(&rx->ring->header->consumer_sleeping, 0, memory_order_relaxed);
    if (!ring_bell_drain(rx->ring->data_bell[0]))
        rx->producer_gone = true;
}

/* Spins, then sleeps once on the data bell; the caller looks again. */
static inline void ring_wait_for_data(struct ring_receiver *rx)
{
    for (int i = 0; i < RING_SPIN_LIMIT; i++) {
        /* Relaxed is enough to notice a change: ring_available loads the tail
         * again with acquire before any frame is read. */
        if (atomic_load_explicit(&rx->ring->header->tail, memory_order_relaxed) != rx->head)
            return;
        ring_cpu_relax();
    }
    if (ring_receiver_prepare_wait(rx)) {
        ring_bell_wait(rx->ring->data_bell[0]);
        ring_receiver_finish_wait(rx);
    }
}

/*
 * Receives the next message into out (reusing its allocation), waiting
 * (spinning, then sleeping) for it. RING_CLOSED once the producer is gone and
 * the ring is drained (also if it died in the middle of a message);
 * RING_CORRUPT for a corrupt frame, then and on every later call.
 */
static inline enum ring_status ring_recv(struct ring_receiver *rx, struct ring_buf *out)
{
    for (;;) {
        bool got;

        if (rx->poisoned)
            return RING_CORRUPT;
        if (ring_take_message(rx, out, &got) != RING_OK) {
            rx->poisoned = true;
            return RING_CORRUPT;
        }
        if (got)
            return RING_OK;
        /* The bell hung up before that look at the ring, so the ring held
         * everything the producer ever published. */
        if (rx->producer_gone)
            return RING_CLOSED;
        ring_wait_for_data(rx);
    }
}

#endif /* MPROC_RING_H */
