/*
 * isolation.c - one global variable, one address: a forked child changes
 * its own copy-on-write copy, while a thread changes the one the main thread
 * sees; and what each write cost the kernel.
 *
 * Mirrors: mproc isolation
 * Lesson:  the seed's Q2, "processes have separate memory space, while
 *          threads share the same memory space", shown rather than stated,
 *          and counted: the child's write takes a minor page fault (the
 *          kernel copies the page), the thread's takes none.
 *
 * Usage:   isolation
 *
 * Output (stdout; ADDR is the same %p address on every line of one run):
 *     fork: parent sets counter = 100 at ADDR
 *     fork: child sets counter = 200 at ADDR
 *     fork: the child's one write cost 1 minor fault: the kernel copied one 4 KiB page
 *     fork: the child's private dirty memory: B KiB before the write, A KiB after
 *     fork: parent after join sees counter = 100 at ADDR
 *     fork: same address, different values: the child changed its own copy-on-write copy, not the parent's.
 *     thread: main sets counter = 100 at ADDR
 *     thread: thread sets counter = 200 at ADDR
 *     thread: the thread's one write cost 0 minor faults: no page was copied
 *     thread: main after join sees counter = 200 at ADDR
 *     thread: same address, same value: threads share one address space.
 *
 * The fault counts come from getrusage(RUSAGE_SELF) just before and just
 * after the one write (any other count n is said as "cost n minor
 * faults"). The private dirty line comes from /proc/self/smaps_rollup
 * (Linux 4.14 and later) and is left out where there is no such file.
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

#include <fcntl.h>
#include <pthread.h>
#include <sys/resource.h>

static const char *progname = "isolation";
static const char *synopsis = "";

/*
 * The variable under study, on a page of its own: nothing else the program
 * writes shares its page, so a write to it faults (or not) for its own
 * sake. 64 KiB covers every page size in use (4, 16 and 64 KiB). Plain,
 * not atomic: every write and the read after it are ordered by
 * fork/waitpid or by pthread_create/pthread_join.
 */
static struct {
    _Alignas(65536) long counter;
} own_page;

/* This process's minor page faults so far, all its threads together. */
static long minor_faults(void)
{
    struct rusage usage;

    if (getrusage(RUSAGE_SELF, &usage) == -1)
        die("getrusage");
    return usage.ru_minflt;
}

/*
 * Minor faults taken by one write of value into counter. A first call
 * touches the stack the measuring calls use, so that copying it on write
 * is not counted against the write. Volatile: the store stays between the
 * two counts.
 */
static long faults_of_write(long value)
{
    minor_faults();
    long before = minor_faults();
    *(volatile long *)&own_page.counter = value;
    return minor_faults() - before;
}

/* Says what who's one write cost: n minor faults. */
static void say_faults(const char *part, const char *who, long n)
{
    long kib = sysconf(_SC_PAGESIZE) / 1024;

    if (n == 0)
        say("%s: %s's one write cost 0 minor faults: no page was copied\n", part, who);
    else if (n == 1)
        say("%s: %s's one write cost 1 minor fault: the kernel copied one %ld KiB page\n", part,
            who, kib);
    else
        say("%s: %s's one write cost %ld minor faults: "
            "the kernel copied its %ld KiB page, and more faulted\n",
            part, who, n, kib);
}

/*
 * This process's Private_Dirty memory in KiB, from /proc/self/smaps_rollup;
 * false where there is no such file. Reads into a static buffer, whose
 * pages the caller has touched already, so that reading does not itself
 * dirty new pages.
 */
static bool private_dirty_kib(long *kib)
{
    static char text[64 * 1024];
    int fd = open("/proc/self/smaps_rollup", O_RDONLY | O_CLOEXEC);

    if (fd == -1)
        return false;
    size_t len = read_full(fd, text, sizeof text - 1);
    if (close(fd) == -1)
        die("close");
    text[len] = '\0';
    const char *field = strstr(text, "\nPrivate_Dirty:");
    if (field == NULL)
        return false;
    char *end;
    errno = 0;
    *kib = strtol(field + strlen("\nPrivate_Dirty:"), &end, 10);
    return errno == 0 && end != field + strlen("\nPrivate_Dirty:");
}

/*
 * In the child: writes 200 into its copy of counter, and says what that
 * cost: the faults, and its private dirty memory before and after (where
 * the system tells).
 */
static void child_writes(void)
{
    long dirty_before, dirty_after;

    /* Once for nothing: the buffer's and the stack's pages become the
     * child's own before anything is measured. */
    private_dirty_kib(&dirty_before);
    bool dirty_known = private_dirty_kib(&dirty_before);
    long faults = faults_of_write(200);
    dirty_known = private_dirty_kib(&dirty_after) && dirty_known;
    say("fork: child sets counter = %ld at %p\n", own_page.counter, (void *)&own_page.counter);
    say_faults("fork", "the child", faults);
    if (dirty_known)
        say("fork: the child's private dirty memory: %ld KiB before the write, %ld KiB after\n",
            dirty_before, dirty_after);
}

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

    own_page.counter = 100;
    /* say() flushes: nothing left in the buffer for the child to print again. */
    say("fork: parent sets counter = %ld at %p\n", own_page.counter, (void *)&own_page.counter);

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
        child_writes();
        child_saw = (struct sighting){ .addr = &own_page.counter, .value = own_page.counter };
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

    say("fork: parent after join sees counter = %ld at %p\n", own_page.counter,
        (void *)&own_page.counter);
    if (child_saw.addr != (void *)&own_page.counter || child_saw.value == own_page.counter) {
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

    long faults = faults_of_write(200);
    say("thread: thread sets counter = %ld at %p\n", own_page.counter, (void *)&own_page.counter);
    say_faults("thread", "the thread", faults);
    *thread_saw = (struct sighting){ .addr = &own_page.counter, .value = own_page.counter };
    return NULL;
}

/* Part 2: a thread writes 200 into the one counter both threads share. */
static bool thread_part(void)
{
    struct sighting thread_saw;
    pthread_t thread;
    int err;

    own_page.counter = 100;
    say("thread: main sets counter = %ld at %p\n", own_page.counter, (void *)&own_page.counter);

    if ((err = pthread_create(&thread, NULL, thread_main, &thread_saw)) != 0)
        die_with("pthread_create", err);
    if ((err = pthread_join(thread, NULL)) != 0)
        die_with("pthread_join", err);

    say("thread: main after join sees counter = %ld at %p\n", own_page.counter,
        (void *)&own_page.counter);
    if (thread_saw.addr != (void *)&own_page.counter || thread_saw.value != own_page.counter) {
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
