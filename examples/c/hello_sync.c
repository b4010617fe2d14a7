/*
 * hello_sync: the synchronous libpstorage API in one small program.
 *
 *   hello_sync CLUSTER [DIR]
 *
 * Connects to CLUSTER (configured under $PSTORAGE_CONF_DIR or
 * /etc/pstorage/clusters), creates DIR (default /hello), writes a file with
 * pwrite and pwritev, reads it back with pread and preadv, lists the
 * directory, changes the file's replication, renames and removes it.
 * Exits 0 on success, 1 with libpstorage's message on the first failure.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include <pstorage.h>

static int fail(const char *what, long rc)
{
    fprintf(stderr, "hello_sync: %s failed: %s (%ld)\n", what, pstorage_last_error(), rc);
    return 1;
}

#define TRY(call)                                                                                  \
    do {                                                                                           \
        long rc_ = (long)(call);                                                                   \
        if (rc_ < 0)                                                                               \
            return fail(#call, rc_);                                                               \
    } while (0)

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s CLUSTER [DIR]\n", argv[0]);
        return 2;
    }
    const char *dir = argc == 3 ? argv[2] : "/hello";
    char path[512], renamed[512];
    snprintf(path, sizeof path, "%s/greeting.txt", dir);
    snprintf(renamed, sizeof renamed, "%s/greeting-renamed.txt", dir);

    pstorage_cluster_t *cluster;
    TRY(pstorage_connect(argv[1], NULL, &cluster));
    TRY(pstorage_mkdir(cluster, dir, PSTORAGE_MKDIR_PARENTS));

    /* Write: an exclusive write lease, creating and truncating the file. */
    pstorage_file_t *file;
    TRY(pstorage_open(cluster, path, PSTORAGE_O_RDWR | PSTORAGE_O_CREAT | PSTORAGE_O_TRUNC, &file));
    const char hello[] = "hello, ";
    const char world[] = "pstorage\n";
    TRY(pstorage_pwrite(file, hello, strlen(hello), 0));
    struct iovec parts[2] = {
        {.iov_base = (void *)world, .iov_len = 4},
        {.iov_base = (void *)(world + 4), .iov_len = strlen(world) - 4},
    };
    ssize_t n = pstorage_pwritev(file, parts, 2, strlen(hello));
    if (n != (ssize_t)strlen(world))
        return fail("pstorage_pwritev", n);
    TRY(pstorage_flush(file));
    pstorage_stat_t st;
    TRY(pstorage_fstat(file, &st));
    printf("wrote %s: %llu bytes, inode %llu, replicas %u:%u\n", path,
           (unsigned long long)st.size, (unsigned long long)st.ino, st.attrs.replicas_norm,
           st.attrs.replicas_min);
    TRY(pstorage_close(file));

    /* Read: a shared read lease. */
    TRY(pstorage_open(cluster, path, PSTORAGE_O_RDONLY, &file));
    char text[64] = {0};
    n = pstorage_pread(file, text, sizeof text - 1, 0);
    if (n < 0)
        return fail("pstorage_pread", n);
    printf("read back: %s", text);
    if (strcmp(text, "hello, pstorage\n") != 0) {
        fprintf(stderr, "hello_sync: read back %zd unexpected bytes\n", n);
        return 1;
    }
    char a[5] = {0}, b[4] = {0};
    struct iovec into[2] = {{.iov_base = a, .iov_len = 4}, {.iov_base = b, .iov_len = 3}};
    n = pstorage_preadv(file, into, 2, 7);
    if (n != 7 || strcmp(a, "psto") != 0 || strcmp(b, "rag") != 0) {
        fprintf(stderr, "hello_sync: preadv returned %zd: '%s' '%s'\n", n, a, b);
        return 1;
    }
    TRY(pstorage_close(file));

    /* Every replica of every block the same (pstorage verify). */
    pstorage_verify_result_t verified;
    TRY(pstorage_verify(cluster, path, 0, &verified));
    printf("verified %llu chunks, %llu replicas: %llu problems\n",
           (unsigned long long)verified.chunks, (unsigned long long)verified.replicas,
           (unsigned long long)verified.problems);
    if (verified.chunks == 0 || verified.problems != 0) {
        fprintf(stderr, "hello_sync: verify found problems\n");
        return 1;
    }

    /* Attributes: keep 2 copies, accept writes with 1. */
    pstorage_attrs_t attrs = {.replicas_norm = 2, .replicas_min = 1};
    TRY(pstorage_set_attr(cluster, path, &attrs, 0));
    TRY(pstorage_get_attr(cluster, path, &attrs));
    printf("replicas now %u:%u, chunk size %llu\n", attrs.replicas_norm, attrs.replicas_min,
           (unsigned long long)attrs.chunk_size);
    if (attrs.replicas_norm != 2 || attrs.replicas_min != 1) {
        fprintf(stderr, "hello_sync: set_attr did not take effect\n");
        return 1;
    }

    TRY(pstorage_rename(cluster, path, renamed));
    pstorage_dir_t *listing;
    TRY(pstorage_opendir(cluster, dir, &listing));
    pstorage_dirent_t entry;
    int entries = 0, rc;
    while ((rc = pstorage_readdir(listing, &entry)) == 1) {
        printf("%s %s %llu\n", entry.stat.kind == PSTORAGE_KIND_DIR ? "dir " : "file", entry.name,
               (unsigned long long)entry.stat.size);
        entries++;
    }
    TRY(rc);
    TRY(pstorage_closedir(listing));
    if (entries != 1) {
        fprintf(stderr, "hello_sync: expected 1 entry in %s, found %d\n", dir, entries);
        return 1;
    }

    TRY(pstorage_unlink(cluster, renamed));
    TRY(pstorage_unlink(cluster, dir));
    TRY(pstorage_disconnect(cluster));
    printf("hello_sync: ok\n");
    return 0;
}
