/*
 * cube_pool.c - a pool of forked worker processes prints the cube of each
 * number; results come back to the parent, which checks it got them all.
 *
 * Mirrors: mproc cube [--processes N] [NUMBERS...]
 * Lesson:  the seed's Q5, multiprocessing.Pool(processes=3) and
 *          pool.map(print_cube, [1, 2, 3, 4, 5]).
 *
 * Usage:   cube_pool [--processes N] [NUMBERS...]
 *              N from 1 to 256, default 3; NUMBERS are 64-bit integers,
 *              negative ones too, default 1 2 3 4 5. The cube is exact for
 *              any of them (wideint.h).
 *
 * Output (stdout): one line per number, printed by whichever worker got it,
 * in no fixed order, then the parent's line, always last:
 *     The cube of 1 is 1
 *     The cube of 3 is 27
 *     The cube of 2 is 8
 *     The cube of 4 is 64
 *     The cube of 5 is 125
 *     Main process completed
 *
 * How it works. Worker w has its own task pipe and gets tasks w, w+N, w+2N...
 * as fixed-size binary messages; it reads until end-of-file, which the parent
 * causes by closing the write end when that worker's share is sent. All
 * workers write fixed-size results into one shared result pipe: a write of at
 * most PIPE_BUF bytes is atomic, so messages never interleave. Each worker
 * prints its line with a single write(2) for the same reason.
 *
 * Deadlocks avoided:
 *   - Each worker closes the task-pipe write ends it inherited from the
 *     parent for earlier workers; otherwise those workers would never see
 *     end-of-file and the pool would never finish.
 *   - The parent closes its copy of the result pipe's write end, so the read
 *     end reports end-of-file exactly when every worker has gone.
 *   - The parent feeds tasks and drains results in one poll(2) loop: writing
 *     every task first would block on a full task pipe while the workers
 *     block on a full result pipe.
 *   - A worker that dies only closes its pipes: the parent sees EPIPE (it
 *     ignores SIGPIPE) or end-of-file, reports the missing results and exits
 *     1 instead of hanging.
 *
 * Exit status: 0 on success; 1 if a system call fails, a worker does not
 * exit 0, or a result is missing (a message on stderr says which); 2 on bad
 * usage.
 *
 * Helpers: die(), fail(), usage_error(), parse_ll(), parse_range(),
 * write_all(), read_full(), say() and reap_all() come from common.h, shared
 * by all the C twins; this program sets its failure_cleanup to
 * terminate_workers().
 *
 * Build: cc -std=c11 -O2 -Wall -Wextra -Werror -D_GNU_SOURCE -pthread \
 *            cube_pool.c -o cube_pool
 */
#include "common.h" /* first: it sets the feature-test macros */

#include <poll.h>
#include <signal.h>
#include <stdint.h>

#include "wideint.h"

#define MAX_PROCESSES 256

/* Parent -> worker: one number to cube. */
struct task {
    uint64_t index; /* position in the input list */
    int64_t n;
};

/*
 * Worker -> parent: the answer for one task. Laid out without padding bytes,
 * so every byte written to the pipe is a defined one.
 */
struct result {
    uint64_t index;
    int64_t n;
    uint32_t cube[WIDE_LIMBS]; /* |n|^3, least significant limb first */
    uint32_t cube_negative;    /* 1 if n^3 < 0 */
    uint32_t unused;           /* always 0; fills what would be tail padding */
};
_Static_assert(sizeof(struct result) == 16 + 4 * WIDE_LIMBS + 8, "struct result has padding");

/* Many workers share one result pipe: their writes must be atomic. */
_Static_assert(sizeof(struct result) <= _POSIX_PIPE_BUF, "result message exceeds PIPE_BUF");
_Static_assert(sizeof(struct task) <= _POSIX_PIPE_BUF, "task message exceeds PIPE_BUF");

/* The parent's view of one worker. */
struct worker {
    pid_t pid;
    int task_fd;      /* write end of this worker's task pipe; -1 once closed */
    size_t next_task; /* next input index to send it; steps by the pool size */
};

static const char *progname = "cube_pool";
static const char *synopsis = "[--processes N] [NUMBERS...]";

/* Parent state that a failure exit must clean up: every worker is reaped, even on error. */
static struct worker *workers = NULL;
static size_t nworkers = 0;
static int result_fd = -1; /* read end of the result pipe, in the parent */

/*
 * Best effort, for error paths only: closes the parent's pipe ends, asks the
 * workers to stop with SIGTERM, as Pool.terminate() does, and reaps them, so
 * a failing parent leaves neither zombies nor orphans behind.
 */
static void terminate_workers(void)
{
    for (size_t i = 0; i < nworkers; i++) {
        if (workers[i].task_fd != -1)
            close(workers[i].task_fd);
        workers[i].task_fd = -1;
        kill(workers[i].pid, SIGTERM); /* ESRCH is impossible: unreaped */
    }
    if (result_fd != -1)
        close(result_fd);
    result_fd = -1;
    while (wait(NULL) != -1 || errno == EINTR)
        continue;
    nworkers = 0;
}

/*
 * Reads one fixed-size message. True if one arrived, false on end-of-file at
 * a message boundary; a message cut short by end-of-file is an error.
 */
static bool read_message(int fd, void *buf, size_t len, const char *what)
{
    size_t got = read_full(fd, buf, len);

    if (got == 0)
        return false;
    if (got < len)
        fail("truncated %s message (%zu of %zu bytes)", what, got, len);
    return true;
}

/*
 * A worker's whole life: cube each task until end-of-file, print one line
 * per task, send each result back, then leave without exit handlers.
 */
static noreturn void worker_main(int task_fd, int result_out)
{
    struct task task;

    while (read_message(task_fd, &task, sizeof task, "task")) {
        struct wide cube = wide_power(task.n, 3);
        struct result result = { .index = task.index, .n = task.n,
                                 .cube_negative = cube.negative };
        char digits[WIDE_DEC_LEN];
        char line[sizeof "The cube of  is \n" + 2 * WIDE_DEC_LEN];

        memcpy(result.cube, cube.limb, sizeof result.cube);
        wide_format(&cube, digits);

        int len = snprintf(line, sizeof line, "The cube of %lld is %s\n", (long long)task.n,
                           digits);
        if (len < 0 || (size_t)len >= sizeof line)
            die("snprintf");
        /* One write per line, so lines from different workers stay whole. */
        if (write_all(STDOUT_FILENO, line, (size_t)len) == -1)
            die("write stdout");
        if (write_all(result_out, &result, sizeof result) == -1)
            die("write result");
    }
    if (close(task_fd) == -1)
        die("close");
    if (close(result_out) == -1)
        die("close");
    _exit(EXIT_SUCCESS);
}

/* Closes the parent's end of worker w's task pipe: w sees end-of-file. */
static void finish_feeding(struct worker *w)
{
    if (close(w->task_fd) == -1)
        die("close");
    w->task_fd = -1;
}

/* Forks worker number `id`, wiring its task pipe and the shared result pipe. */
static void start_worker(size_t id, int result_pipe[2])
{
    int task_pipe[2];

    if (pipe(task_pipe) == -1)
        die("pipe");
    /* Anything still buffered would be copied into the worker and printed again. */
    if (fflush(stdout) == EOF)
        die("fflush");

    pid_t pid;
    switch (pid = fork()) {
    case -1:
        die("fork");

    case 0:
        in_child = true;
        /* The parent ignores SIGPIPE; a worker printing into a closed pipe just dies. */
        if (signal(SIGPIPE, SIG_DFL) == SIG_ERR)
            die("signal");
        if (close(task_pipe[1]) == -1) /* write end: only the parent feeds tasks */
            die("close");
        if (close(result_pipe[0]) == -1) /* read end: only the parent collects */
            die("close");
        /* Earlier workers' task pipes: holding them would keep those workers
         * from ever seeing end-of-file. */
        for (size_t i = 0; i < nworkers; i++) {
            if (workers[i].task_fd != -1 && close(workers[i].task_fd) == -1)
                die("close");
        }
        worker_main(task_pipe[0], result_pipe[1]);

    default:
        break;
    }

    if (close(task_pipe[0]) == -1) /* read end: the worker's */
        die("close");
    workers[nworkers++] = (struct worker){ .pid = pid, .task_fd = task_pipe[1], .next_task = id };
}

/*
 * Sends worker w its next task; closes its pipe after the last one. A worker
 * that has died shows up as EPIPE: its remaining tasks are simply not sent,
 * and the parent later reports the missing results.
 */
static void feed(struct worker *w, const int64_t *numbers, size_t ntasks)
{
    struct task task = { .index = w->next_task, .n = numbers[w->next_task] };

    if (write_all(w->task_fd, &task, sizeof task) == -1) {
        if (errno != EPIPE)
            die("write task");
        finish_feeding(w);
        return;
    }
    w->next_task += nworkers;
    if (w->next_task >= ntasks)
        finish_feeding(w);
}

/* Records one result; false (with a message) if it is not one we expected. */
static bool accept_result(const struct result *r, const int64_t *numbers, size_t ntasks,
                          bool *seen)
{
    if (r->index >= ntasks || seen[r->index] || r->n != numbers[r->index]) {
        fprintf(stderr, "%s: unexpected result for index %llu\n", progname,
                (unsigned long long)r->index);
        return false;
    }
    struct wide expected = wide_power(r->n, 3);
    if (memcmp(expected.limb, r->cube, sizeof r->cube) != 0 ||
        r->cube_negative != (uint32_t)expected.negative) {
        fprintf(stderr, "%s: wrong cube for %lld\n", progname, (long long)r->n);
        return false;
    }
    seen[r->index] = true;
    return true;
}

/*
 * The parent's loop: feed tasks as task pipes have room and collect results
 * as they arrive, until the result pipe reports end-of-file (every worker has
 * closed its write end, normally by exiting). Returns true if every result
 * that arrived was one we expected; *accepted counts them.
 */
static bool run_pool(const int64_t *numbers, size_t ntasks, bool *seen, size_t *accepted)
{
    struct pollfd *fds = malloc((nworkers + 1) * sizeof *fds);
    size_t *owner = malloc((nworkers + 1) * sizeof *owner);
    bool ok = true;

    if (fds == NULL || owner == NULL)
        die("malloc");

    for (;;) {
        nfds_t nfds = 0;

        fds[nfds++] = (struct pollfd){ .fd = result_fd, .events = POLLIN };
        for (size_t i = 0; i < nworkers; i++) {
            if (workers[i].task_fd == -1)
                continue;
            owner[nfds] = i;
            fds[nfds++] = (struct pollfd){ .fd = workers[i].task_fd, .events = POLLOUT };
        }

        if (poll(fds, nfds, -1) == -1) {
            if (errno == EINTR)
                continue;
            die("poll");
        }

        for (nfds_t k = 1; k < nfds; k++) {
            if (fds[k].revents & POLLNVAL) {
                errno = EBADF;
                die("poll");
            }
            /* POLLERR: the worker is gone; feed() sees EPIPE and stops. */
            if (fds[k].revents & (POLLOUT | POLLERR | POLLHUP))
                feed(&workers[owner[k]], numbers, ntasks);
        }

        if (fds[0].revents & POLLNVAL) {
            errno = EBADF;
            die("poll");
        }
        if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            struct result r;
            if (!read_message(result_fd, &r, sizeof r, "result"))
                break; /* end-of-file: no worker can send anything more */
            if (accept_result(&r, numbers, ntasks, seen))
                (*accepted)++;
            else
                ok = false;
        }
    }

    free(fds);
    free(owner);
    return ok;
}

int main(int argc, char *argv[])
{
    static const int64_t default_numbers[] = { 1, 2, 3, 4, 5 };
    long long processes = 3;
    bool options_done = false;
    size_t ntasks = 0;
    int64_t *numbers = malloc((size_t)argc * sizeof *numbers + sizeof default_numbers);

    /* Every failure exit in the parent first terminates and reaps the workers. */
    failure_cleanup = terminate_workers;
    if (numbers == NULL)
        die("malloc");

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char *value = NULL;
        long long v;

        if (!options_done && strcmp(arg, "--") == 0) {
            options_done = true;
            continue;
        } else if (!options_done && (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0)) {
            printf("usage: %s %s\n"
                   "A pool of N worker processes (default 3, at most %d) prints the cube\n"
                   "of each number (default 1 2 3 4 5).\n",
                   progname, synopsis, MAX_PROCESSES);
            free(numbers);
            return EXIT_SUCCESS;
        } else if (!options_done && strcmp(arg, "--processes") == 0) {
            if (i + 1 == argc)
                usage_error("missing value for", arg);
            value = argv[++i];
        } else if (!options_done && strncmp(arg, "--processes=", 12) == 0) {
            value = arg + 12;
        } else if (parse_ll(arg, &v)) {
            numbers[ntasks++] = (int64_t)v;
            continue;
        } else if (!options_done && arg[0] == '-' && arg[1] != '\0') {
            usage_error("unknown option", arg);
        } else {
            usage_error("numbers must be 64-bit integers, not", arg);
        }
        if (!parse_range(value, 1, MAX_PROCESSES, &processes))
            usage_error("--processes must be an integer from 1 to 256, not", value);
    }
    if (ntasks == 0) {
        memcpy(numbers, default_numbers, sizeof default_numbers);
        ntasks = sizeof default_numbers / sizeof default_numbers[0];
    }

    bool *seen = calloc(ntasks, sizeof *seen);
    workers = malloc((size_t)processes * sizeof *workers);
    if (seen == NULL || workers == NULL)
        die("malloc");

    /* A dead worker must show up as EPIPE from write(), not kill the parent. */
    if (signal(SIGPIPE, SIG_IGN) == SIG_ERR)
        die("signal");

    int result_pipe[2];
    if (pipe(result_pipe) == -1)
        die("pipe");
    result_fd = result_pipe[0];

    for (size_t id = 0; id < (size_t)processes; id++)
        start_worker(id, result_pipe);

    /* Write end: the workers' alone. Now end-of-file means all have closed it. */
    if (close(result_pipe[1]) == -1)
        die("close");

    /* A pool larger than the task list: the extra workers get nothing. */
    for (size_t i = 0; i < nworkers; i++) {
        if (workers[i].next_task >= ntasks)
            finish_feeding(&workers[i]);
    }

    size_t accepted = 0;
    bool results_ok = run_pool(numbers, ntasks, seen, &accepted);

    /* Normally all closed already; after a worker died some may still be open. */
    for (size_t i = 0; i < nworkers; i++) {
        if (workers[i].task_fd != -1)
            finish_feeding(&workers[i]);
    }
    if (close(result_fd) == -1)
        die("close");
    result_fd = -1;

    /* Reap with wait() until ECHILD: every worker, in the order they end. */
    bool workers_ok = reap_all("worker");
    nworkers = 0;
    bool complete = results_ok && accepted == ntasks;
    if (accepted != ntasks)
        fprintf(stderr, "%s: got %zu of %zu results\n", progname, accepted, ntasks);

    free(seen);
    free(workers);
    free(numbers);
    workers = NULL;
    if (!workers_ok || !complete)
        return EXIT_FAILURE;

    say("Main process completed\n");
    return EXIT_SUCCESS;
}
