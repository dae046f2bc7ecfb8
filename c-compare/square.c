/*
 * square.c - one child process prints the square of N; the parent waits for
 * it, then says it is done.
 *
 * Mirrors: mproc square [N]
 * Lesson:  the seed's Q3, multiprocessing.Process(target=print_square,
 *          args=(5,)) followed by start() and join().
 *
 * Usage:   square [N]          N is any 64-bit integer, default 5
 *
 * Output (stdout):
 *     The square of 5 is 25
 *     Main process completed
 *
 * Exit status: 0 on success; 1 if a system call fails or the child does not
 * exit 0 (a message on stderr names the call or the child); 2 on bad usage.
 *
 * Build: cc -std=c11 -O2 -Wall -Wextra -Werror -D_GNU_SOURCE -pthread \
 *            square.c -o square
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

#include "wideint.h"

#define EXIT_USAGE 2

static const char *progname = "square";
static bool in_child = false;

/*
 * Reports a failed call as "square: call: reason" and exits 1. A child leaves
 * with _exit(): it must not run exit handlers or flush stdio buffers that
 * belong to the parent.
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
    fprintf(stderr, "%s: %s '%s' (usage: %s [N])\n", progname, what, arg, progname);
    exit(EXIT_USAGE);
}

/* Parses a whole string as a decimal integer; false on junk or overflow. */
static bool parse_ll(const char *s, long long *out)
{
    char *end;

    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0')
        return false;
    *out = v;
    return true;
}

/* waitpid() for one child, retried on EINTR. */
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

int main(int argc, char *argv[])
{
    long long n = 5;
    bool have_n = false;
    bool options_done = false;

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        long long v;

        if (!options_done && strcmp(arg, "--") == 0) {
            options_done = true;
        } else if (!options_done && (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0)) {
            printf("usage: %s [N]\nA child process prints N squared (default N = 5).\n",
                   progname);
            return EXIT_SUCCESS;
        } else if (parse_ll(arg, &v)) {
            if (have_n)
                usage_error("unexpected argument", arg);
            n = v;
            have_n = true;
        } else if (!options_done && arg[0] == '-' && arg[1] != '\0') {
            usage_error("unknown option", arg);
        } else {
            usage_error("N must be a 64-bit integer, not", arg);
        }
    }

    /* Anything still buffered would be copied into the child and printed twice. */
    if (fflush(stdout) == EOF)
        die("fflush");

    pid_t child;
    switch (child = fork()) {
    case -1:
        die("fork");

    case 0: {
        in_child = true;
        struct wide square = wide_power(n, 2);
        char digits[WIDE_DEC_LEN];

        wide_format(&square, digits);
        if (printf("The square of %lld is %s\n", n, digits) < 0)
            die("printf");
        if (fflush(stdout) == EOF)
            die("fflush");
        _exit(EXIT_SUCCESS);
    }

    default:
        break;
    }

    /* Parent: join the child, as Process.join() does. */
    if (!child_succeeded(child, wait_for(child)))
        return EXIT_FAILURE;

    if (printf("Main process completed\n") < 0)
        die("printf");
    if (fflush(stdout) == EOF)
        die("fflush");
    return EXIT_SUCCESS;
}
