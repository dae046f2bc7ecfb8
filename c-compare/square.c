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
 * Helpers: die(), usage_error(), parse_ll(), say(), wait_for() and
 * child_succeeded() come from common.h, shared by all the C twins.
 *
 * Build: cc -std=c11 -O2 -Wall -Wextra -Werror -D_GNU_SOURCE -pthread \
 *            square.c -o square
 */
#include "common.h" /* first: it sets the feature-test macros */
#include "wideint.h"

static const char *progname = "square";
static const char *synopsis = "[N]";

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
            printf("usage: %s %s\nA child process prints N squared (default N = 5).\n",
                   progname, synopsis);
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
        say("The square of %lld is %s\n", n, digits);
        _exit(EXIT_SUCCESS);
    }

    default:
        break;
    }

    /* Parent: join the child, as Process.join() does. */
    if (!child_succeeded("child", child, wait_for(child)))
        return EXIT_FAILURE;

    say("Main process completed\n");
    return EXIT_SUCCESS;
}
