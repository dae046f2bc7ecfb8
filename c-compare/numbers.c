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
 * Helpers: die(), die_with(), usage_error(), parse_range(), say() and
 * reap_all() (wait() until ECHILD) come from common.h, shared by all the C
 * twins.
 *
 * Build: cc -std=c11 -O2 -Wall -Wextra -Werror -D_GNU_SOURCE -pthread \
 *            numbers.c -o numbers
 */
#include "common.h" /* first: it sets the feature-test macros */

#define MAX_COUNT 1000

static const char *progname = "numbers";
static const char *synopsis = "[--count N]";

/* The child's whole life: print its number and leave without exit handlers. */
static noreturn void child_main(long long number)
{
    in_child = true;
    say("Process %lld: %lld\n", number, number);
    _exit(EXIT_SUCCESS);
}

int main(int argc, char *argv[])
{
    long long count = 4;

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char *value = NULL;

        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            printf("usage: %s %s\n"
                   "N child processes (default 4, at most %d) each print their number.\n",
                   progname, synopsis, MAX_COUNT);
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
    for (long long i = 1; i <= count && fork_errno == 0; i++) {
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

    /* Reap with wait() until ECHILD: every child that did start, in the order they end. */
    bool all_ok = reap_all("child");
    if (fork_errno != 0)
        die_with("fork", fork_errno);
    if (!all_ok)
        return EXIT_FAILURE;

    say("Main process completed\n");
    return EXIT_SUCCESS;
}
