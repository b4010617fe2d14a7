/*
 * copy_aio: asynchronous I/O with libpstorage, the way a hypervisor uses it.
 *
 *   copy_aio [-d DEPTH] CLUSTER copy LOCAL_FILE CLUSTER_PATH
 *       Copies LOCAL_FILE into the cluster with DEPTH (default 32) writes in
 *       flight, reported through the cluster's event fd (poll mode: no
 *       library thread calls into this program), flushes, then reads the
 *       copy back with DEPTH reads in flight reported by callbacks, and
 *       compares it with the local file. Exit code 1 on any mismatch.
 *
 *   copy_aio [-d DEPTH] CLUSTER verify LOCAL_FILE CLUSTER_PATH
 *       Only the read-back and comparison.
 *
 *   copy_aio [-d DEPTH] [-t SECONDS] [-s SIZE_MIB] [-m cb|poll] CLUSTER bench CLUSTER_PATH
 *       Fills a SIZE_MIB (default 256) file with sequential 1 MiB writes,
 *       then runs random 4 KiB writes and random 4 KiB reads for SECONDS
 *       (default 10) each at queue depth DEPTH, and prints IOPS. Completions
 *       resubmit from their callback (-m cb, the default) or from an event
 *       loop on the event fd (-m poll). The file is removed at the end.
 *
 * The cluster is found under $PSTORAGE_CONF_DIR (or /etc/pstorage/clusters).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <pstorage.h>

#define COPY_BLOCK (1u << 20)
#define RAND_BLOCK 4096u
#define POLL_TIMEOUT_MS 120000

static int depth = 32;

static void die(const char *what, long rc)
{
    fprintf(stderr, "copy_aio: %s: %s (%ld)\n", what, rc < 0 ? pstorage_last_error() : "", rc);
    exit(1);
}

static void check(const char *what, long rc)
{
    if (rc < 0)
        die(what, rc);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Reads exactly len bytes of the local file unless it ends first. */
static size_t read_local(int fd, void *buf, size_t len, off_t offset)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = pread(fd, (char *)buf + done, len - done, offset + (off_t)done);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("copy_aio: reading the local file");
            exit(1);
        }
        if (n == 0)
            break;
        done += (size_t)n;
    }
    return done;
}

/* Waits for the event fd, then collects finished completions. */
static int wait_events(pstorage_cluster_t *cluster, int efd, pstorage_completion_t **comps, int max)
{
    for (;;) {
        int n = pstorage_poll_io_events(cluster, comps, max);
        check("pstorage_poll_io_events", n);
        if (n > 0)
            return n;
        struct pollfd p = {.fd = efd, .events = POLLIN};
        int rc = poll(&p, 1, POLL_TIMEOUT_MS);
        if (rc < 0 && errno != EINTR) {
            perror("copy_aio: poll");
            exit(1);
        }
        if (rc == 0) {
            fprintf(stderr, "copy_aio: no completion for %d s\n", POLL_TIMEOUT_MS / 1000);
            exit(1);
        }
    }
}

/* ---- copy ---------------------------------------------------------------- */

struct copy_slot {
    char *buf;
    char *local;
    uint64_t offset;
    size_t len;
};

/* Read phase: callbacks hand finished slots to the main thread. */
static pthread_mutex_t done_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t done_cond = PTHREAD_COND_INITIALIZER;
static pstorage_completion_t **done_list;
static int done_count;

static void on_read_done(pstorage_completion_t *comp, void *arg)
{
    (void)arg;
    /* Runs on a library thread: only hand over, never block on I/O. */
    pthread_mutex_lock(&done_lock);
    done_list[done_count++] = comp;
    pthread_cond_signal(&done_cond);
    pthread_mutex_unlock(&done_lock);
}

static int verify(pstorage_cluster_t *cluster, const char *local_path, const char *remote_path);

static int copy(pstorage_cluster_t *cluster, const char *local_path, const char *remote_path)
{
    int local = open(local_path, O_RDONLY);
    if (local < 0) {
        perror(local_path);
        return 1;
    }
    struct stat lst;
    if (fstat(local, &lst) < 0) {
        perror(local_path);
        return 1;
    }
    uint64_t size = (uint64_t)lst.st_size;
    struct copy_slot *slots = calloc((size_t)depth, sizeof *slots);
    pstorage_completion_t **comps = calloc((size_t)depth, sizeof *comps);
    for (int i = 0; i < depth; i++) {
        slots[i].buf = malloc(COPY_BLOCK);
        slots[i].local = malloc(COPY_BLOCK);
        if (!slots[i].buf || !slots[i].local)
            die("out of memory", 0);
    }

    pstorage_file_t *file;
    check("pstorage_open",
          pstorage_open(cluster, remote_path, PSTORAGE_O_RDWR | PSTORAGE_O_CREAT | PSTORAGE_O_TRUNC,
                        &file));

    /* Write phase, poll mode. */
    int efd = pstorage_cluster_event_fd(cluster);
    check("pstorage_cluster_event_fd", efd);
    double started = now_s();
    uint64_t next = 0;
    int inflight = 0;
    for (int i = 0; i < depth && next < size; i++) {
        struct copy_slot *s = &slots[i];
        s->offset = next;
        s->len = read_local(local, s->buf, COPY_BLOCK, (off_t)next);
        next += s->len;
        pstorage_completion_t *c;
        check("pstorage_aio_create_completion", pstorage_aio_create_completion(s, NULL, &c));
        check("pstorage_aio_write", pstorage_aio_write(file, s->offset, s->buf, s->len, c));
        inflight++;
    }
    while (inflight > 0) {
        int n = wait_events(cluster, efd, comps, depth);
        for (int i = 0; i < n; i++) {
            void *arg;
            check("pstorage_aio_get_arg", pstorage_aio_get_arg(comps[i], &arg));
            struct copy_slot *s = arg;
            ssize_t rv = pstorage_aio_get_return_value(comps[i]);
            if (rv != (ssize_t)s->len)
                die("asynchronous write", rv);
            check("pstorage_aio_release", pstorage_aio_release(comps[i]));
            inflight--;
            if (next < size) {
                s->offset = next;
                s->len = read_local(local, s->buf, COPY_BLOCK, (off_t)next);
                next += s->len;
                pstorage_completion_t *c;
                check("pstorage_aio_create_completion", pstorage_aio_create_completion(s, NULL, &c));
                check("pstorage_aio_write", pstorage_aio_write(file, s->offset, s->buf, s->len, c));
                inflight++;
            }
        }
    }
    pstorage_completion_t *flush;
    check("pstorage_aio_create_completion", pstorage_aio_create_completion(NULL, NULL, &flush));
    check("pstorage_aio_flush", pstorage_aio_flush(file, flush));
    check("pstorage_aio_wait_for_complete", pstorage_aio_wait_for_complete(flush));
    check("asynchronous flush", pstorage_aio_get_return_value(flush));
    check("pstorage_aio_release", pstorage_aio_release(flush));
    double wrote = now_s() - started;
    uint64_t remote_size;
    check("pstorage_get_size", pstorage_get_size(file, &remote_size));
    check("pstorage_close", pstorage_close(file));
    printf("wrote %llu bytes to %s at depth %d: %.1f MiB/s\n", (unsigned long long)size, remote_path,
           depth, size / 1048576.0 / (wrote > 0 ? wrote : 1e-9));
    if (remote_size != size) {
        fprintf(stderr, "copy_aio: the copy has %llu bytes, the original %llu\n",
                (unsigned long long)remote_size, (unsigned long long)size);
        return 1;
    }
    for (int i = 0; i < depth; i++) {
        free(slots[i].buf);
        free(slots[i].local);
    }
    free(slots);
    free(comps);
    close(local);
    return verify(cluster, local_path, remote_path);
}

/* Reads CLUSTER_PATH back with callbacks and compares it with LOCAL_FILE. */
static int verify(pstorage_cluster_t *cluster, const char *local_path, const char *remote_path)
{
    int local = open(local_path, O_RDONLY);
    if (local < 0) {
        perror(local_path);
        return 1;
    }
    struct stat lst;
    if (fstat(local, &lst) < 0) {
        perror(local_path);
        return 1;
    }
    uint64_t size = (uint64_t)lst.st_size;
    struct copy_slot *slots = calloc((size_t)depth, sizeof *slots);
    pstorage_completion_t **comps = calloc((size_t)depth, sizeof *comps);
    done_list = calloc((size_t)depth, sizeof *done_list);
    for (int i = 0; i < depth; i++) {
        slots[i].buf = malloc(COPY_BLOCK);
        slots[i].local = malloc(COPY_BLOCK);
        if (!slots[i].buf || !slots[i].local)
            die("out of memory", 0);
    }
    pstorage_file_t *file;
    check("pstorage_open", pstorage_open(cluster, remote_path, PSTORAGE_O_RDONLY, &file));
    uint64_t remote_size;
    check("pstorage_get_size", pstorage_get_size(file, &remote_size));
    if (remote_size != size) {
        fprintf(stderr, "copy_aio: MISMATCH: %s has %llu bytes, %s %llu\n", remote_path,
                (unsigned long long)remote_size, local_path, (unsigned long long)size);
        return 1;
    }

    /* Read-back, callback mode. */
    double started = now_s();
    uint64_t next = 0;
    int inflight = 0;
    for (int i = 0; i < depth && next < size; i++) {
        struct copy_slot *s = &slots[i];
        s->offset = next;
        s->len = size - next < COPY_BLOCK ? (size_t)(size - next) : COPY_BLOCK;
        next += s->len;
        pstorage_completion_t *c;
        check("pstorage_aio_create_completion", pstorage_aio_create_completion(s, on_read_done, &c));
        check("pstorage_aio_read", pstorage_aio_read(file, s->offset, s->buf, s->len, c));
        inflight++;
    }
    uint64_t compared = 0;
    while (inflight > 0) {
        pthread_mutex_lock(&done_lock);
        while (done_count == 0)
            pthread_cond_wait(&done_cond, &done_lock);
        int n = done_count;
        memcpy(comps, done_list, (size_t)n * sizeof *comps);
        done_count = 0;
        pthread_mutex_unlock(&done_lock);
        for (int i = 0; i < n; i++) {
            void *arg;
            check("pstorage_aio_get_arg", pstorage_aio_get_arg(comps[i], &arg));
            struct copy_slot *s = arg;
            ssize_t rv = pstorage_aio_get_return_value(comps[i]);
            if (rv != (ssize_t)s->len)
                die("asynchronous read", rv);
            check("pstorage_aio_release", pstorage_aio_release(comps[i]));
            inflight--;
            if (read_local(local, s->local, s->len, (off_t)s->offset) != s->len ||
                memcmp(s->buf, s->local, s->len) != 0) {
                fprintf(stderr, "copy_aio: MISMATCH in the %zu bytes at offset %llu of %s\n", s->len,
                        (unsigned long long)s->offset, remote_path);
                exit(1); /* reads still in flight: no orderly close */
            }
            compared += s->len;
            if (next < size) {
                s->offset = next;
                s->len = size - next < COPY_BLOCK ? (size_t)(size - next) : COPY_BLOCK;
                next += s->len;
                pstorage_completion_t *c;
                check("pstorage_aio_create_completion",
                      pstorage_aio_create_completion(s, on_read_done, &c));
                check("pstorage_aio_read", pstorage_aio_read(file, s->offset, s->buf, s->len, c));
                inflight++;
            }
        }
    }
    double read = now_s() - started;
    check("pstorage_close", pstorage_close(file));
    close(local);
    printf("read back %s at depth %d: %.1f MiB/s; %llu bytes identical\n", remote_path, depth,
           size / 1048576.0 / (read > 0 ? read : 1e-9), (unsigned long long)compared);
    for (int i = 0; i < depth; i++) {
        free(slots[i].buf);
        free(slots[i].local);
    }
    free(slots);
    free(comps);
    free(done_list);
    return 0;
}

/* ---- bench --------------------------------------------------------------- */

struct pass {
    pstorage_file_t *file;
    int write;
    int random;
    size_t block;
    uint64_t size;
    double deadline;
    atomic_uint_fast64_t next; /* sequential offset */
    atomic_uint_fast64_t ops;
    atomic_int active;
    atomic_long error;
};

struct bench_slot {
    struct pass *pass;
    char *buf;
    uint64_t rng;
};

static pthread_mutex_t pass_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pass_cond = PTHREAD_COND_INITIALIZER;

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static void on_bench_done(pstorage_completion_t *comp, void *arg);

/* Starts the slot's next operation; 0 if the pass is over for it. */
static int bench_submit(struct bench_slot *s, pstorage_callback_t cb)
{
    struct pass *p = s->pass;
    uint64_t offset;
    if (atomic_load(&p->error) != 0)
        return 0;
    if (p->random) {
        if (now_s() >= p->deadline)
            return 0;
        offset = xorshift(&s->rng) % (p->size / p->block) * p->block;
    } else {
        offset = atomic_fetch_add(&p->next, p->block);
        if (offset >= p->size)
            return 0;
    }
    pstorage_completion_t *c;
    long rc = pstorage_aio_create_completion(s, cb, &c);
    if (rc == 0)
        rc = p->write ? pstorage_aio_write(p->file, offset, s->buf, p->block, c)
                      : pstorage_aio_read(p->file, offset, s->buf, p->block, c);
    if (rc < 0) {
        fprintf(stderr, "copy_aio: submitting: %s (%ld)\n", pstorage_last_error(), rc);
        atomic_store(&p->error, rc);
        return 0;
    }
    return 1;
}

/* Finishes one operation; returns whether it succeeded. */
static int bench_reap(struct bench_slot *s, pstorage_completion_t *comp)
{
    struct pass *p = s->pass;
    ssize_t rv = pstorage_aio_get_return_value(comp);
    if (rv != (ssize_t)p->block) {
        fprintf(stderr, "copy_aio: %s at depth %d: %s (%zd)\n", p->write ? "write" : "read", depth,
                pstorage_last_error(), rv);
        atomic_store(&p->error, rv < 0 ? (long)rv : -EIO);
    }
    pstorage_aio_release(comp);
    atomic_fetch_add(&p->ops, 1);
    return rv == (ssize_t)p->block;
}

static void on_bench_done(pstorage_completion_t *comp, void *arg)
{
    struct bench_slot *s = arg;
    bench_reap(s, comp);
    /* Resubmitting from the callback is allowed: it does not block. */
    if (!bench_submit(s, on_bench_done)) {
        pthread_mutex_lock(&pass_lock);
        if (atomic_fetch_sub(&s->pass->active, 1) == 1)
            pthread_cond_signal(&pass_cond);
        pthread_mutex_unlock(&pass_lock);
    }
}

static void run_pass(pstorage_cluster_t *cluster, struct pass *p, struct bench_slot *slots,
                     int poll_mode, const char *name, int seconds)
{
    double started = now_s();
    p->deadline = started + seconds;
    atomic_store(&p->next, 0);
    atomic_store(&p->ops, 0);
    atomic_store(&p->error, 0);
    atomic_store(&p->active, depth);
    if (!poll_mode) {
        for (int i = 0; i < depth; i++) {
            slots[i].pass = p;
            if (!bench_submit(&slots[i], on_bench_done))
                atomic_fetch_sub(&p->active, 1);
        }
        pthread_mutex_lock(&pass_lock);
        while (atomic_load(&p->active) > 0)
            pthread_cond_wait(&pass_cond, &pass_lock);
        pthread_mutex_unlock(&pass_lock);
    } else {
        int efd = pstorage_cluster_event_fd(cluster);
        check("pstorage_cluster_event_fd", efd);
        pstorage_completion_t **comps = calloc((size_t)depth, sizeof *comps);
        int inflight = 0;
        for (int i = 0; i < depth; i++) {
            slots[i].pass = p;
            inflight += bench_submit(&slots[i], NULL);
        }
        while (inflight > 0) {
            int n = wait_events(cluster, efd, comps, depth);
            for (int i = 0; i < n; i++) {
                void *arg;
                check("pstorage_aio_get_arg", pstorage_aio_get_arg(comps[i], &arg));
                bench_reap(arg, comps[i]);
                inflight--;
                inflight += bench_submit(arg, NULL);
            }
        }
        free(comps);
    }
    double elapsed = now_s() - started;
    if (atomic_load(&p->error) != 0)
        die(name, atomic_load(&p->error));
    uint64_t ops = atomic_load(&p->ops);
    printf("%-14s depth=%-3d ops=%-9llu seconds=%-6.2f IOPS=%-9.0f MiB/s=%.1f\n", name, depth,
           (unsigned long long)ops, elapsed, ops / elapsed, ops * (double)p->block / 1048576.0 / elapsed);
    fflush(stdout);
}

static int bench(pstorage_cluster_t *cluster, const char *remote_path, int seconds, uint64_t size_mib,
                 int poll_mode)
{
    uint64_t size = size_mib << 20;
    pstorage_file_t *file;
    check("pstorage_open",
          pstorage_open(cluster, remote_path, PSTORAGE_O_RDWR | PSTORAGE_O_CREAT | PSTORAGE_O_TRUNC,
                        &file));
    /* The same replication as `pstorage bench --replicas 3`. */
    pstorage_attrs_t attrs = {.replicas_norm = 3, .replicas_min = 2};
    check("pstorage_set_attr", pstorage_set_attr(cluster, remote_path, &attrs, 0));
    struct bench_slot *slots = calloc((size_t)depth, sizeof *slots);
    for (int i = 0; i < depth; i++) {
        slots[i].buf = malloc(COPY_BLOCK);
        if (!slots[i].buf)
            die("out of memory", 0);
        memset(slots[i].buf, 0xa5, COPY_BLOCK);
        slots[i].rng = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1) ^ (uint64_t)getpid();
    }
    printf("copy_aio bench: %s, %llu MiB, depth %d, %s mode\n", remote_path,
           (unsigned long long)size_mib, depth, poll_mode ? "poll" : "callback");
    struct pass p = {.file = file, .size = size};
    p.write = 1, p.random = 0, p.block = COPY_BLOCK;
    run_pass(cluster, &p, slots, poll_mode, "seq-write-1M", 0);
    p.write = 1, p.random = 1, p.block = RAND_BLOCK;
    run_pass(cluster, &p, slots, poll_mode, "rand-write-4K", seconds);
    p.write = 0, p.random = 1, p.block = RAND_BLOCK;
    run_pass(cluster, &p, slots, poll_mode, "rand-read-4K", seconds);
    check("pstorage_close", pstorage_close(file));
    check("pstorage_unlink", pstorage_unlink(cluster, remote_path));
    for (int i = 0; i < depth; i++)
        free(slots[i].buf);
    free(slots);
    return 0;
}

static void usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s [-d DEPTH] CLUSTER copy LOCAL_FILE CLUSTER_PATH\n"
            "       %s [-d DEPTH] CLUSTER verify LOCAL_FILE CLUSTER_PATH\n"
            "       %s [-d DEPTH] [-t SECONDS] [-s SIZE_MIB] [-m cb|poll] CLUSTER bench CLUSTER_PATH\n",
            argv0, argv0, argv0);
    exit(2);
}

int main(int argc, char **argv)
{
    int seconds = 10, poll_mode = 0, opt;
    uint64_t size_mib = 256;
    while ((opt = getopt(argc, argv, "d:t:s:m:")) != -1) {
        switch (opt) {
        case 'd':
            depth = atoi(optarg);
            break;
        case 't':
            seconds = atoi(optarg);
            break;
        case 's':
            size_mib = strtoull(optarg, NULL, 10);
            break;
        case 'm':
            if (strcmp(optarg, "poll") == 0)
                poll_mode = 1;
            else if (strcmp(optarg, "cb") != 0)
                usage(argv[0]);
            break;
        default:
            usage(argv[0]);
        }
    }
    if (depth < 1 || depth > 1024 || seconds < 1 || size_mib < 1 || argc - optind < 3)
        usage(argv[0]);
    const char *cluster_name = argv[optind], *command = argv[optind + 1];
    pstorage_cluster_t *cluster;
    check("pstorage_connect", pstorage_connect(cluster_name, NULL, &cluster));
    int rc;
    if (strcmp(command, "copy") == 0 && argc - optind == 4)
        rc = copy(cluster, argv[optind + 2], argv[optind + 3]);
    else if (strcmp(command, "verify") == 0 && argc - optind == 4)
        rc = verify(cluster, argv[optind + 2], argv[optind + 3]);
    else if (strcmp(command, "bench") == 0 && argc - optind == 3)
        rc = bench(cluster, argv[optind + 2], seconds, size_mib, poll_mode);
    else
        usage(argv[0]);
    check("pstorage_disconnect", pstorage_disconnect(cluster));
    return rc;
}
