/*
 * common.h - the helpers every C twin needs and none of them teaches:
 * error exits, argument parsing, whole reads and writes, and waiting for
 * children. What is left in each .c file is the lesson itself.
 *
 * The model is TLPI's tlpi_hdr.h and error_functions.c: one place for the
 * error functions, so every program reports a failure the same way:
 *
 *     progname: call: reason       a system call failed            exit 1
 *     progname: what went wrong    anything else failed            exit 1
 *     progname: what 'arg' (usage: progname synopsis)   bad usage  exit 2
 *
 * Unlike TLPI's, these are static inline functions in a header rather than
 * a library: each program is still one file, built with one cc command,
 * and a program that does not use a helper gets no warning for it.
 *
 * Include it first: it sets the feature-test macros. Then, at file scope,
 * the program names itself for the messages:
 *
 *     static const char *progname = "square";
 *     static const char *synopsis = "[N]";   (may be "")
 *
 * A child process sets in_child = true right after fork(), so that a
 * failure in it leaves with _exit(). A program whose parent must clean up
 * before a failure exit (cube_pool.c reaps its workers) sets
 * failure_cleanup.
 *
 * Not a program: the Makefile builds only the .c files in this directory.
 */
#ifndef MPROC_COMMON_H
#define MPROC_COMMON_H

#if !defined(_GNU_SOURCE) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE  /* glibc: MAP_ANONYMOUS (ring.h) is not in POSIX.1-2008 */
#define _DARWIN_C_SOURCE /* macOS: nor is MAP_ANON */
#if defined(__FreeBSD__) && !defined(__BSD_VISIBLE)
/* FreeBSD: _POSIX_C_SOURCE hides the BSD names (MAP_ANON) and no public
 * macro shows them again; <sys/cdefs.h> leaves __BSD_VISIBLE to us then. */
#define __BSD_VISIBLE 1
#endif
#endif

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdnoreturn.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/* Exit status for bad usage; 0 and 1 are EXIT_SUCCESS and EXIT_FAILURE. */
#define EXIT_USAGE 2

#if defined(__GNUC__) || defined(__clang__)
#define PRINTF_LIKE(fmt, first) __attribute__((__format__(__printf__, fmt, first)))
#else
#define PRINTF_LIKE(fmt, first)
#endif

/* Defined by the including program (see above): the name every message starts with. */
static const char *progname;
/* Defined by the including program: what follows the name in a usage line. */
static const char *synopsis;

/* True in a forked child: a failure there leaves with _exit(), not exit(). */
static bool in_child = false;

/* If set, called in the parent (never in a child) before any failure exit. */
static void (*failure_cleanup)(void) = NULL;

/*
 * Exits 1. A child flushes its own stdout and leaves with _exit(): it must
 * not run exit handlers or flush stdio buffers that belong to the parent.
 * The parent first runs failure_cleanup, if the program set one.
 */
static inline noreturn void exit_failure(void)
{
    if (in_child) {
        fflush(stdout);
        _exit(EXIT_FAILURE);
    }
    if (failure_cleanup != NULL)
        failure_cleanup();
    exit(EXIT_FAILURE);
}

/* Reports "progname: call: reason" for error number err, and exits 1. */
static inline noreturn void die_with(const char *call, int err)
{
    fprintf(stderr, "%s: %s: %s\n", progname, call, strerror(err));
    exit_failure();
}

/* The same, for the many calls that report through errno. */
static inline noreturn void die(const char *call)
{
    die_with(call, errno);
}

static inline noreturn void fail(const char *format, ...) PRINTF_LIKE(1, 2);

/*
 * Reports a failure that is not a system call's, "progname: message", and
 * exits 1. The message is formatted first so that it goes out in a single
 * write, whole even when another process writes to stderr at the same time.
 */
static inline noreturn void fail(const char *format, ...)
{
    char message[512];
    va_list ap;

    va_start(ap, format);
    vsnprintf(message, sizeof message, format, ap);
    va_end(ap);
    fprintf(stderr, "%s: %s\n", progname, message);
    exit_failure();
}

/* Reports bad usage, "progname: what 'arg' (usage: progname synopsis)", and exits 2. */
static inline noreturn void usage_error(const char *what, const char *arg)
{
    fprintf(stderr, "%s: %s '%s' (usage: %s%s%s)\n", progname, what, arg, progname,
            synopsis[0] != '\0' ? " " : "", synopsis);
    exit(EXIT_USAGE);
}

/* Parses a whole string as a decimal integer in [min, max]; false on junk or overflow. */
static inline bool parse_range(const char *s, long long min, long long max, long long *out)
{
    char *end;

    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
        return false;
    *out = v;
    return true;
}

/* Parses a whole string as any 64-bit decimal integer; false on junk or overflow. */
static inline bool parse_ll(const char *s, long long *out)
{
    return parse_range(s, LLONG_MIN, LLONG_MAX, out);
}

static inline void say(const char *format, ...) PRINTF_LIKE(1, 2);

/*
 * Prints to stdout and flushes, so the text is out before any fork (which
 * would copy a full buffer into the child) or _exit (which would drop it).
 */
static inline void say(const char *format, ...)
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

/* Writes all of buf, retrying EINTR and short writes. -1 with errno on error. */
static inline int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;

    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/*
 * Reads until len bytes have arrived or end-of-file, retrying EINTR and
 * short reads; a read error is fatal. Returns the bytes read: less than len
 * only at end-of-file.
 */
static inline size_t read_full(int fd, void *buf, size_t len)
{
    char *p = buf;
    size_t got = 0;

    while (got < len) {
        ssize_t n = read(fd, p + got, len - got);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            die("read");
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    return got;
}

/* waitpid() for one child, retried on EINTR; returns its wait status. */
static inline int wait_for(pid_t pid)
{
    int status;

    while (waitpid(pid, &status, 0) == -1) {
        if (errno != EINTR)
            die("waitpid");
    }
    return status;
}

/*
 * True if the child exited 0. Otherwise says on stderr how it ended, naming
 * it as `who` ("child", "worker", "producer"), and returns false.
 */
static inline bool child_succeeded(const char *who, pid_t pid, int status)
{
    if (WIFEXITED(status)) {
        if (WEXITSTATUS(status) == 0)
            return true;
        fprintf(stderr, "%s: %s %ld exited with status %d\n", progname, who, (long)pid,
                WEXITSTATUS(status));
    } else if (WIFSIGNALED(status)) {
        bool core = false;
#ifdef WCOREDUMP
        core = WCOREDUMP(status);
#endif
        fprintf(stderr, "%s: %s %ld killed by signal %d (%s)%s\n", progname, who, (long)pid,
                WTERMSIG(status), strsignal(WTERMSIG(status)), core ? " (core dumped)" : "");
    } else {
        /* Stopped or continued: not reported without WUNTRACED/WCONTINUED. */
        fprintf(stderr, "%s: %s %ld: unexpected wait status 0x%x\n", progname, who, (long)pid,
                (unsigned)status);
    }
    return false;
}

/*
 * Waits for every child this process has, in the order they end, reporting
 * each failure as child_succeeded() does. ECHILD is the normal way out: no
 * children are left. Returns false if any failed.
 */
static inline bool reap_all(const char *who)
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
        if (!child_succeeded(who, pid, status))
            all_ok = false;
    }
}

#endif /* MPROC_COMMON_H */
