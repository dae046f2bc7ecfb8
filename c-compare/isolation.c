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
 * Helpers: die(), die_with(), usage_error(), say(), write_all(),
 * read_full(), wait_for() and child_succeeded() come from common.h, shared
 * by all the C twins.
 *
 * Build: cc -std=c11 -O2 -Wall -Wextra -Werror -D_GNU_SOURCE -pthread \
 *            isolation.c -o isolation
 */
#include "common.h" /* first: it sets the feature-test macros */

#include <pthread.h>

static const char *progname = "isolation";
static const char *synopsis = "";

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
        if (write_all(report[1], &child_saw, sizeof child_saw) == -1)
            die("write");
        if (close(report[1]) == -1)
            die("close");
        _exit(EXIT_SUCCESS);

    default:
        break;
    }

    if (close(report[1]) == -1) /* write end: the child's */
        die("close");
    bool reported = read_full(report[0], &child_saw, sizeof child_saw) == sizeof child_saw;
    if (close(report[0]) == -1)
        die("close");
    if (!child_succeeded("child", child, wait_for(child)))
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
    if (argc > 1)
        usage_error("unexpected argument", argv[1]);

    if (!fork_part() || !thread_part())
        return EXIT_FAILURE;
    return EXIT_SUCCESS;
}
