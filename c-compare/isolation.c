/*
 * isolation.c - one global variable, one address: a forked child changes
 * its own copy-on-write copy, while a thread changes the one the main thread
 * sees.
 *
 * Mirrors: mproc isolation
 * Lesson:  the seed's Q2, "processes have separate memory space, while
 *          threads share the same memory space", shown rather than stated.
 *
 * Usage:   isolation
 *
 * Output (stdout; ADDR is the same %p address on every line of one run):
 *     fork: parent sets counter = 100 at ADDR
 *     fork: child sets counter = 200 at ADDR
 *     fork: parent after join sees counter = 100 at ADDR
 *     fork: same address, different values: the child changed its own copy-on-write copy, not the parent's.
 *     thread: main sets counter = 100 at ADDR
 *     thread: thread sets counter = 200 at ADDR
 *     thread: main after join sees counter = 200 at ADDR
 *     thread: same address, same value: threads share one address space.
 *
 * The two conclusions are checked, not assumed: the child sends the address
 * and value it saw back through a pipe, the thread hands them back through
 * pthread_join(), and the program compares them with its own before saying
 * "same address, different values" or "same address, same value". If they
 * ever disagree it says so and exits 1.
 *
 * Exit status: 0 on success; 1 if a system call fails, the child does not
 * exit 0, or a conclusion does not hold; 2 on bad usage.
 *
 * Build: cc -std=c11 -O2 -Wall -Wextra -Werror -D_GNU_SOURCE -pthread \
 *            isolation.c -o isolation
 */
#if !defined(_GNU_SOURCE) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdnoreturn.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define EXIT_USAGE 2

/*
 * The variable under study. Plain, not atomic: every write and the read after
 * it are ordered by fork/waitpid or by pthread_create/pthread_join.
 */
static long counter = 0;

/* What another process or thread saw: its &counter and its counter. */
struct sighting {
    void *addr;
    long value;
};

static const char *progname = "isolation";
static bool in_child = false;

/* Reports "isolation: call: reason" for an error number and exits 1. */
static noreturn void die_with(const char *call, int err)
{
    fprintf(stderr, "%s: %s: %s\n", progname, call, strerror(err));
    if (in_child) {
        /* _exit(): the child must not run exit handlers or flush the parent's buffers. */
        fflush(stdout);
        _exit(EXIT_FAILURE);
    }
    exit(EXIT_FAILURE);
}

/* The same, for calls that report through errno. */
static noreturn void die(const char *call)
{
    die_with(call, errno);
}

#if defined(__GNUC__) || defined(__clang__)
#define PRINTF_LIKE __attribute__((format(printf, 1, 2)))
#else
#define PRINTF_LIKE
#endif

/* Prints one line and flushes it, so it is out before any fork or exit. */
static void say(const char *format, ...) PRINTF_LIKE;

static void say(const char *format, ...)
{
    va_list ap;

    va_start(ap, format);
    int n = vprintf(format, ap);
    va_end(ap);
    if (n < 0)
        die("printf");
    if (fflush(stdout) == EOF)
        die("fflush");
}

static int wait_for(pid_t pid)
{
    int status;

    while (waitpid(pid, &status, 0) == -1) {
        if (errno != EINTR)
            die("waitpid");
    }
    return status;
}

/* True if the child exited 0; otherwise says how it ended, on stderr. */
static bool child_succeeded(pid_t pid, int status)
{
    if (WIFEXITED(status)) {
        if (WEXITSTATUS(status) == 0)
            return true;
        fprintf(stderr, "%s: child %ld exited with status %d\n", progname, (long)pid,
                WEXITSTATUS(status));
    } else if (WIFSIGNALED(status)) {
        bool core = false;
#ifdef WCOREDUMP
        core = WCOREDUMP(status);
#endif
        fprintf(stderr, "%s: child %ld killed by signal %d (%s)%s\n", progname, (long)pid,
                WTERMSIG(status), strsignal(WTERMSIG(status)), core ? " (core dumped)" : "");
    } else {
        /* Stopped or continued: not reported without WUNTRACED/WCONTINUED. */
        fprintf(stderr, "%s: child %ld: unexpected wait status 0x%x\n", progname, (long)pid,
                (unsigned)status);
    }
    return false;
}

/* Writes all of buf, retrying EINTR and short writes. */
static void write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;

    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            die("write");
        }
        p += n;
        len -= (size_t)n;
    }
}

/* Reads exactly len bytes; false if end-of-file comes first. */
static bool read_exact(int fd, void *buf, size_t len)
{
    char *p = buf;

    while (len > 0) {
        ssize_t n = read(fd, p, len);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            die("read");
        }
        if (n == 0)
            return false;
        p += n;
        len -= (size_t)n;
    }
    return true;
}

/* Part 1: a forked child writes 200 into its copy of counter. */
static bool fork_part(void)
{
    int report[2]; /* child -> parent: the child's sighting */
    struct sighting child_saw;

    counter = 100;
    /* say() flushes: nothing left in the buffer for the child to print again. */
    say("fork: parent sets counter = %ld at %p\n", counter, (void *)&counter);

    if (pipe(report) == -1)
        die("pipe");

    pid_t child;
    switch (child = fork()) {
    case -1:
        die("fork");

    case 0:
        in_child = true;
        if (close(report[0]) == -1) /* read end: the parent's */
            die("close");
        counter = 200;
        say("fork: child sets counter = %ld at %p\n", counter, (void *)&counter);
        child_saw = (struct sighting){ .addr = &counter, .value = counter };
        write_all(report[1], &child_saw, sizeof child_saw);
        if (close(report[1]) == -1)
            die("close");
        _exit(EXIT_SUCCESS);

    default:
        break;
    }

    if (close(report[1]) == -1) /* write end: the child's */
        die("close");
    bool reported = read_exact(report[0], &child_saw, sizeof child_saw);
    if (close(report[0]) == -1)
        die("close");
    if (!child_succeeded(child, wait_for(child)))
        return false;
    if (!reported) {
        fprintf(stderr, "%s: the child exited without reporting\n", progname);
        return false;
    }

    say("fork: parent after join sees counter = %ld at %p\n", counter, (void *)&counter);
    if (child_saw.addr != (void *)&counter || child_saw.value == counter) {
        say("fork: unexpected: the child saw %ld at %p\n", child_saw.value, child_saw.addr);
        return false;
    }
    say("fork: same address, different values: the child changed its own copy-on-write copy, "
        "not the parent's.\n");
    return true;
}

static void *thread_main(void *arg)
{
    struct sighting *thread_saw = arg;

    counter = 200;
    say("thread: thread sets counter = %ld at %p\n", counter, (void *)&counter);
    *thread_saw = (struct sighting){ .addr = &counter, .value = counter };
    return NULL;
}

/* Part 2: a thread writes 200 into the one counter both threads share. */
static bool thread_part(void)
{
    struct sighting thread_saw;
    pthread_t thread;
    int err;

    counter = 100;
    say("thread: main sets counter = %ld at %p\n", counter, (void *)&counter);

    if ((err = pthread_create(&thread, NULL, thread_main, &thread_saw)) != 0)
        die_with("pthread_create", err);
    if ((err = pthread_join(thread, NULL)) != 0)
        die_with("pthread_join", err);

    say("thread: main after join sees counter = %ld at %p\n", counter, (void *)&counter);
    if (thread_saw.addr != (void *)&counter || thread_saw.value != counter) {
        say("thread: unexpected: the thread saw %ld at %p\n", thread_saw.value, thread_saw.addr);
        return false;
    }
    say("thread: same address, same value: threads share one address space.\n");
    return true;
}

int main(int argc, char *argv[])
{
    if (argc == 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
        printf("usage: %s\nShows a forked child's memory is a copy and a thread's is shared.\n",
               progname);
        return EXIT_SUCCESS;
    }
    if (argc > 1) {
        fprintf(stderr, "%s: unexpected argument '%s' (usage: %s)\n", progname, argv[1],
                progname);
        return EXIT_USAGE;
    }

    if (!fork_part() || !thread_part())
        return EXIT_FAILURE;
    return EXIT_SUCCESS;
}
