/*
 * numbers.c - N child processes each print their own number; the parent
 * reaps them all, then says it is done.
 *
 * Mirrors: mproc numbers [--count N]
 * Lesson:  the seed's Q6, four multiprocessing.Process objects started in a
 *          loop and joined in a second loop.
 *
 * Usage:   numbers [--count N]     N from 0 to 1000, default 4
 *
 * Output (stdout): one line per child, in whatever order the scheduler runs
 * them, then the parent's line, always last:
 *     Process 1: 1
 *     Process 3: 3
 *     Process 2: 2
 *     Process 4: 4
 *     Main process completed
 *
 * If a fork fails, the children already started are still reaped before the
 * program reports the failure.
 *
 * Exit status: 0 on success; 1 if a system call fails or a child does not
 * exit 0 (a message on stderr names the call or the child); 2 on bad usage.
 *
 * Build: cc -std=c11 -O2 -Wall -Wextra -Werror -D_GNU_SOURCE -pthread \
 *            numbers.c -o numbers
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
#include <unistd.h>

#define EXIT_USAGE 2
#define MAX_COUNT 1000

static const char *progname = "numbers";
static bool in_child = false;

/*
 * Reports a failed call as "numbers: call: reason" and exits 1. A child
 * leaves with _exit(): it must not run exit handlers or flush stdio buffers
 * that belong to the parent.
 */
static noreturn void die(const char *call)
{
    int saved = errno;

    fprintf(stderr, "%s: %s: %s\n", progname, call, strerror(saved));
    if (in_child) {
        fflush(stdout);
        _exit(EXIT_FAILURE);
    }
    exit(EXIT_FAILURE);
}

static noreturn void usage_error(const char *what, const char *arg)
{
    fprintf(stderr, "%s: %s '%s' (usage: %s [--count N])\n", progname, what, arg, progname);
    exit(EXIT_USAGE);
}

/* Parses a whole string as a decimal integer in [min, max]. */
static bool parse_range(const char *s, long min, long max, long *out)
{
    char *end;

    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
        return false;
    *out = v;
    return true;
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

/* The child's whole life: print its number and leave without exit handlers. */
static noreturn void child_main(long number)
{
    in_child = true;
    if (printf("Process %ld: %ld\n", number, number) < 0)
        die("printf");
    if (fflush(stdout) == EOF)
        die("fflush");
    _exit(EXIT_SUCCESS);
}

/*
 * Waits for every child this process has, in the order they end. ECHILD is
 * the normal way out: no children are left. Returns false if any failed.
 */
static bool reap_all(void)
{
    bool all_ok = true;

    for (;;) {
        int status;
        pid_t pid = wait(&status);

        if (pid == -1) {
            if (errno == EINTR)
                continue;
            if (errno == ECHILD)
                return all_ok;
            die("wait");
        }
        if (!child_succeeded(pid, status))
            all_ok = false;
    }
}

int main(int argc, char *argv[])
{
    long count = 4;

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char *value = NULL;

        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            printf("usage: %s [--count N]\n"
                   "N child processes (default 4, at most %d) each print their number.\n",
                   progname, MAX_COUNT);
            return EXIT_SUCCESS;
        } else if (strcmp(arg, "--count") == 0) {
            if (i + 1 == argc)
                usage_error("missing value for", arg);
            value = argv[++i];
        } else if (strncmp(arg, "--count=", 8) == 0) {
            value = arg + 8;
        } else {
            usage_error("unexpected argument", arg);
        }
        if (!parse_range(value, 0, MAX_COUNT, &count))
            usage_error("--count must be an integer from 0 to 1000, not", value);
    }

    /* Anything still buffered would be copied into each child and printed again. */
    if (fflush(stdout) == EOF)
        die("fflush");

    int fork_errno = 0;
    for (long i = 1; i <= count && fork_errno == 0; i++) {
        switch (fork()) {
        case -1:
            /* Keep going to the reap loop: the children we have must be reaped. */
            fork_errno = errno;
            break;
        case 0:
            child_main(i);
        default:
            break;
        }
    }

    bool all_ok = reap_all();
    if (fork_errno != 0) {
        errno = fork_errno;
        die("fork");
    }
    if (!all_ok)
        return EXIT_FAILURE;

    if (printf("Main process completed\n") < 0)
        die("printf");
    if (fflush(stdout) == EOF)
        die("fflush");
    return EXIT_SUCCESS;
}
