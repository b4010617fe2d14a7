/*
 * test_errors: checks the error paths of every libpstorage function against
 * a live cluster: NULL and bad handles, NULL buffers, bad flags and values,
 * missing files, missing leases, lease conflicts, misuse of completions,
 * and blocking calls from callbacks. Each check also requires a message
 * from pstorage_last_error().
 *
 *   test_errors CLUSTER
 *
 * The cluster's configuration is read from $PSTORAGE_CONF_DIR/CLUSTER
 * (bs.list and the node's certificate: ca.crt, node.crt, node.key). Works in /test-errors-PID, removed at the end.
 * Prints one line per failed check and "N passed, N failed"; exits 1 if
 * any check failed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include <pstorage.h>

static int passed, failed;

static void expect(const char *what, long got, long want, int line)
{
    const char *message = pstorage_last_error();
    if (message == NULL) {
        failed++;
        printf("FAIL line %d: %s: pstorage_last_error() returned NULL\n", line, what);
        return;
    }
    if (got != want) {
        failed++;
        printf("FAIL line %d: %s returned %ld, expected %ld (last error: %s)\n", line, what, got, want,
               message);
        return;
    }
    if (want < 0 && message[0] == '\0') {
        failed++;
        printf("FAIL line %d: %s failed as expected but left no message\n", line, what);
        return;
    }
    passed++;
}

#define EXPECT(call, want) expect(#call, (long)(call), (long)(want), __LINE__)
#define REQUIRE(call)                                                                              \
    do {                                                                                           \
        long rc_ = (long)(call);                                                                   \
        if (rc_ < 0) {                                                                             \
            printf("FATAL line %d: %s returned %ld: %s\n", __LINE__, #call, rc_,                   \
                   pstorage_last_error());                                                         \
            printf("%d passed, %d failed\n", passed, failed + 1);                                  \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

/* Handles that were never returned by the library. */
#define FAKE(type) ((type *)(uintptr_t)0x5eed5eed0ull)

static void check_bad_handles(void)
{
    pstorage_cluster_t *bc = FAKE(pstorage_cluster_t);
    pstorage_file_t *bf = FAKE(pstorage_file_t);
    pstorage_dir_t *bd = FAKE(pstorage_dir_t);
    pstorage_completion_t *bcomp = FAKE(pstorage_completion_t);
    char buf[16];
    struct iovec iov = {.iov_base = buf, .iov_len = sizeof buf};
    pstorage_stat_t st;
    pstorage_attrs_t attrs = {0};
    pstorage_file_t *f;
    pstorage_dir_t *d;
    pstorage_dirent_t entry;
    pstorage_completion_t *comps[4];
    uint64_t size;
    void *arg;

    /* Not a handle of the library: -EBADF. */
    EXPECT(pstorage_disconnect(bc), -EBADF);
    EXPECT(pstorage_cluster_event_fd(bc), -EBADF);
    EXPECT(pstorage_poll_io_events(bc, comps, 4), -EBADF);
    EXPECT(pstorage_mkdir(bc, "/x", 0), -EBADF);
    EXPECT(pstorage_unlink(bc, "/x"), -EBADF);
    EXPECT(pstorage_rename(bc, "/x", "/y"), -EBADF);
    EXPECT(pstorage_symlink(bc, "t", "/x"), -EBADF);
    EXPECT(pstorage_readlink(bc, "/x", buf, sizeof buf), -EBADF);
    EXPECT(pstorage_link(bc, "/x", "/y"), -EBADF);
    EXPECT(pstorage_mknod(bc, "/x", 0, 0), -EBADF);
    EXPECT(pstorage_chmod(bc, "/x", 0), -EBADF);
    EXPECT(pstorage_chown(bc, "/x", 0, 0), -EBADF);
    EXPECT(pstorage_utimens(bc, "/x", NULL), -EBADF);
    EXPECT(pstorage_rename2(bc, "/x", "/y", 0), -EBADF);
    EXPECT(pstorage_lstat(bc, "/", &st), -EBADF);
    EXPECT(pstorage_getxattr(bc, "/x", "user.a", buf, sizeof buf), -EBADF);
    EXPECT(pstorage_listxattr(bc, "/x", buf, sizeof buf), -EBADF);
    EXPECT(pstorage_setxattr(bc, "/x", "user.a", buf, 1, 0), -EBADF);
    EXPECT(pstorage_removexattr(bc, "/x", "user.a"), -EBADF);
    EXPECT(pstorage_stat(bc, "/", &st), -EBADF);
    EXPECT(pstorage_get_attr(bc, "/", &attrs), -EBADF);
    EXPECT(pstorage_set_attr(bc, "/", &attrs, 0), -EBADF);
    pstorage_verify_result_t vr;
    EXPECT(pstorage_verify(bc, "/x", 0, &vr), -EBADF);
    EXPECT(pstorage_opendir(bc, "/", &d), -EBADF);
    EXPECT(pstorage_open(bc, "/x", PSTORAGE_O_RDONLY, &f), -EBADF);
    EXPECT(pstorage_readdir(bd, &entry), -EBADF);
    EXPECT(pstorage_closedir(bd), -EBADF);
    EXPECT(pstorage_close(bf), -EBADF);
    EXPECT(pstorage_pread(bf, buf, sizeof buf, 0), -EBADF);
    EXPECT(pstorage_pwrite(bf, buf, sizeof buf, 0), -EBADF);
    EXPECT(pstorage_preadv(bf, &iov, 1, 0), -EBADF);
    EXPECT(pstorage_pwritev(bf, &iov, 1, 0), -EBADF);
    EXPECT(pstorage_flush(bf), -EBADF);
    EXPECT(pstorage_truncate(bf, 0), -EBADF);
    EXPECT(pstorage_fstat(bf, &st), -EBADF);
    EXPECT(pstorage_get_size(bf, &size), -EBADF);
    EXPECT(pstorage_aio_read(bf, 0, buf, sizeof buf, bcomp), -EBADF);
    EXPECT(pstorage_aio_write(bf, 0, buf, sizeof buf, bcomp), -EBADF);
    EXPECT(pstorage_aio_flush(bf, bcomp), -EBADF);
    EXPECT(pstorage_aio_discard(bf, 0, 4096, bcomp), -EBADF);
    EXPECT(pstorage_aio_get_return_value(bcomp), -EBADF);
    EXPECT(pstorage_aio_is_complete(bcomp), -EBADF);
    EXPECT(pstorage_aio_wait_for_complete(bcomp), -EBADF);
    EXPECT(pstorage_aio_get_arg(bcomp, &arg), -EBADF);
    EXPECT(pstorage_aio_release(bcomp), -EBADF);

    /* NULL handles: -EINVAL. */
    EXPECT(pstorage_disconnect(NULL), -EINVAL);
    EXPECT(pstorage_cluster_event_fd(NULL), -EINVAL);
    EXPECT(pstorage_poll_io_events(NULL, comps, 4), -EINVAL);
    EXPECT(pstorage_mkdir(NULL, "/x", 0), -EINVAL);
    EXPECT(pstorage_unlink(NULL, "/x"), -EINVAL);
    EXPECT(pstorage_rename(NULL, "/x", "/y"), -EINVAL);
    EXPECT(pstorage_symlink(NULL, "t", "/x"), -EINVAL);
    EXPECT(pstorage_readlink(NULL, "/x", buf, sizeof buf), -EINVAL);
    EXPECT(pstorage_link(NULL, "/x", "/y"), -EINVAL);
    EXPECT(pstorage_mknod(NULL, "/x", 0, 0), -EINVAL);
    EXPECT(pstorage_chmod(NULL, "/x", 0), -EINVAL);
    EXPECT(pstorage_chown(NULL, "/x", 0, 0), -EINVAL);
    EXPECT(pstorage_utimens(NULL, "/x", NULL), -EINVAL);
    EXPECT(pstorage_rename2(NULL, "/x", "/y", 0), -EINVAL);
    EXPECT(pstorage_lstat(NULL, "/", &st), -EINVAL);
    EXPECT(pstorage_getxattr(NULL, "/x", "user.a", buf, sizeof buf), -EINVAL);
    EXPECT(pstorage_listxattr(NULL, "/x", buf, sizeof buf), -EINVAL);
    EXPECT(pstorage_setxattr(NULL, "/x", "user.a", buf, 1, 0), -EINVAL);
    EXPECT(pstorage_removexattr(NULL, "/x", "user.a"), -EINVAL);
    EXPECT(pstorage_stat(NULL, "/", &st), -EINVAL);
    EXPECT(pstorage_get_attr(NULL, "/", &attrs), -EINVAL);
    EXPECT(pstorage_set_attr(NULL, "/", &attrs, 0), -EINVAL);
    EXPECT(pstorage_verify(NULL, "/x", 0, &vr), -EINVAL);
    EXPECT(pstorage_opendir(NULL, "/", &d), -EINVAL);
    EXPECT(pstorage_open(NULL, "/x", 0, &f), -EINVAL);
    EXPECT(pstorage_readdir(NULL, &entry), -EINVAL);
    EXPECT(pstorage_closedir(NULL), -EINVAL);
    EXPECT(pstorage_close(NULL), -EINVAL);
    EXPECT(pstorage_pread(NULL, buf, sizeof buf, 0), -EINVAL);
    EXPECT(pstorage_pwrite(NULL, buf, sizeof buf, 0), -EINVAL);
    EXPECT(pstorage_preadv(NULL, &iov, 1, 0), -EINVAL);
    EXPECT(pstorage_pwritev(NULL, &iov, 1, 0), -EINVAL);
    EXPECT(pstorage_flush(NULL), -EINVAL);
    EXPECT(pstorage_truncate(NULL, 0), -EINVAL);
    EXPECT(pstorage_fstat(NULL, &st), -EINVAL);
    EXPECT(pstorage_get_size(NULL, &size), -EINVAL);
    EXPECT(pstorage_aio_read(NULL, 0, buf, sizeof buf, bcomp), -EINVAL);
    EXPECT(pstorage_aio_flush(NULL, bcomp), -EINVAL);
    EXPECT(pstorage_aio_create_completion(NULL, NULL, NULL), -EINVAL);
    EXPECT(pstorage_aio_get_return_value(NULL), -EINVAL);
    EXPECT(pstorage_aio_is_complete(NULL), -EINVAL);
    EXPECT(pstorage_aio_wait_for_complete(NULL), -EINVAL);
    EXPECT(pstorage_aio_get_arg(NULL, &arg), -EINVAL);
    EXPECT(pstorage_aio_release(NULL), -EINVAL);
}

static void check_connect(const char *name)
{
    pstorage_cluster_t *c;
    EXPECT(pstorage_connect(NULL, NULL, &c), -EINVAL);
    EXPECT(pstorage_connect(name, NULL, NULL), -EINVAL);
    EXPECT(pstorage_connect("bad name!", NULL, &c), -EINVAL);
    EXPECT(pstorage_connect("no-such-cluster", NULL, &c), -ENOENT);
    EXPECT(pstorage_connect(name, "/nonexistent/conf", &c), -ENOENT);

    const char *root = getenv("PSTORAGE_CONF_DIR");
    if (!root) {
        printf("FAIL: PSTORAGE_CONF_DIR is not set; cannot check pstorage_connect_bootstrap\n");
        failed++;
        return;
    }
    char bs_path[1024], key_path[1024], addr[256] = {0}, wrong_dir[] = "/tmp/pstorage-wrong-credsXXXXXX";
    snprintf(bs_path, sizeof bs_path, "%s/%s/bs.list", root, name);
    /* The node's credentials: ca.crt, node.crt, node.key (auth-node). */
    snprintf(key_path, sizeof key_path, "%s/%s", root, name);
    FILE *bs = fopen(bs_path, "r");
    if (!bs || !fgets(addr, sizeof addr, bs)) {
        printf("FAIL: cannot read %s\n", bs_path);
        failed++;
        return;
    }
    fclose(bs);
    addr[strcspn(addr, "\r\n")] = '\0';
    const char *addrs[] = {addr};
    const char *null_addr[] = {NULL};
    EXPECT(pstorage_connect_bootstrap(NULL, 1, key_path, &c), -EINVAL);
    EXPECT(pstorage_connect_bootstrap(addrs, 0, key_path, &c), -EINVAL);
    EXPECT(pstorage_connect_bootstrap(null_addr, 1, key_path, &c), -EINVAL);
    EXPECT(pstorage_connect_bootstrap(addrs, 1, NULL, &c), -EINVAL);
    EXPECT(pstorage_connect_bootstrap(addrs, 1, key_path, NULL), -EINVAL);
    const char *bad_addrs[] = {"127.0.0.1:notaport"};
    EXPECT(pstorage_connect_bootstrap(bad_addrs, 1, key_path, &c), -EINVAL);
    EXPECT(pstorage_connect_bootstrap(addrs, 1, "/nonexistent/creds", &c), -EACCES);

    /* A certificate that is not one. */
    char garbage_path[1100];
    if (!mkdtemp(wrong_dir)) {
        printf("FAIL: cannot make %s\n", wrong_dir);
        failed++;
        return;
    }
    const char *files[] = {"ca.crt", "node.crt", "node.key"};
    for (int i = 0; i < 3; i++) {
        snprintf(garbage_path, sizeof garbage_path, "%s/%s", wrong_dir, files[i]);
        int fd = open(garbage_path, O_WRONLY | O_CREAT | O_EXCL, 0600);
        if (fd < 0 || write(fd, "not pem\n", 8) != 8) {
            printf("FAIL: cannot write %s\n", garbage_path);
            failed++;
            return;
        }
        close(fd);
    }
    EXPECT(pstorage_connect_bootstrap(addrs, 1, wrong_dir, &c), -EINVAL);
    for (int i = 0; i < 3; i++) {
        snprintf(garbage_path, sizeof garbage_path, "%s/%s", wrong_dir, files[i]);
        unlink(garbage_path);
    }
    rmdir(wrong_dir);

    /* And the explicit form works. */
    EXPECT(pstorage_connect_bootstrap(addrs, 1, key_path, &c), 0);
    pstorage_stat_t st;
    EXPECT(pstorage_stat(c, "/", &st), 0);
    EXPECT(st.kind, PSTORAGE_KIND_DIR);
    EXPECT(pstorage_disconnect(c), 0);
    EXPECT(pstorage_disconnect(c), -EBADF);
    EXPECT(pstorage_stat(c, "/", &st), -EBADF);
}

static void check_namespace(pstorage_cluster_t *c, const char *dir)
{
    char path[512], sub[512], file_path[512];
    snprintf(sub, sizeof sub, "%s/sub", dir);
    snprintf(file_path, sizeof file_path, "%s/file", dir);
    pstorage_stat_t st;
    pstorage_attrs_t attrs;
    pstorage_dir_t *d;
    pstorage_file_t *f;

    /* NULL and malformed arguments. */
    EXPECT(pstorage_mkdir(c, NULL, 0), -EINVAL);
    EXPECT(pstorage_mkdir(c, "relative/path", 0), -EINVAL);
    EXPECT(pstorage_mkdir(c, dir, 0x100), -EINVAL);
    EXPECT(pstorage_unlink(c, NULL), -EINVAL);
    EXPECT(pstorage_rename(c, NULL, "/y"), -EINVAL);
    EXPECT(pstorage_rename(c, "/y", NULL), -EINVAL);
    EXPECT(pstorage_stat(c, NULL, &st), -EINVAL);
    EXPECT(pstorage_stat(c, "/", NULL), -EINVAL);
    EXPECT(pstorage_get_attr(c, NULL, &attrs), -EINVAL);
    EXPECT(pstorage_get_attr(c, "/", NULL), -EINVAL);
    EXPECT(pstorage_set_attr(c, "/", NULL, 0), -EINVAL);
    EXPECT(pstorage_opendir(c, NULL, &d), -EINVAL);
    EXPECT(pstorage_opendir(c, "/", NULL), -EINVAL);
    EXPECT(pstorage_open(c, NULL, 0, &f), -EINVAL);
    EXPECT(pstorage_open(c, "/x", 0, NULL), -EINVAL);
    const char bad_utf8[] = {'/', (char)0xff, (char)0xfe, 0};
    EXPECT(pstorage_mkdir(c, bad_utf8, 0), -EINVAL);

    /* Missing things: -ENOENT. */
    snprintf(path, sizeof path, "%s/missing", dir);
    EXPECT(pstorage_open(c, path, PSTORAGE_O_RDONLY, &f), -ENOENT);
    EXPECT(pstorage_open(c, path, PSTORAGE_O_RDWR, &f), -ENOENT);
    EXPECT(pstorage_stat(c, path, &st), -ENOENT);
    EXPECT(pstorage_get_attr(c, path, &attrs), -ENOENT);
    attrs = (pstorage_attrs_t){.replicas_norm = 2, .replicas_min = 1};
    EXPECT(pstorage_set_attr(c, path, &attrs, 0), -ENOENT);
    pstorage_verify_result_t verified;
    EXPECT(pstorage_verify(c, path, 0, &verified), -ENOENT);
    EXPECT(pstorage_verify(c, path, 0x80, &verified), -EINVAL);
    EXPECT(pstorage_verify(c, path, 0, NULL), -EINVAL);
    EXPECT(pstorage_unlink(c, path), -ENOENT);
    EXPECT(pstorage_rename(c, path, sub), -ENOENT);
    EXPECT(pstorage_opendir(c, path, &d), -ENOENT);
    snprintf(path, sizeof path, "%s/missing/child", dir);
    EXPECT(pstorage_mkdir(c, path, 0), -ENOENT);
    EXPECT(pstorage_open(c, path, PSTORAGE_O_RDWR | PSTORAGE_O_CREAT, &f), -ENOENT);

    /* Existing things and kinds. */
    EXPECT(pstorage_mkdir(c, dir, 0), -EEXIST);
    EXPECT(pstorage_mkdir(c, dir, PSTORAGE_MKDIR_PARENTS), 0);
    EXPECT(pstorage_mkdir(c, sub, 0), 0);
    EXPECT(pstorage_open(c, sub, PSTORAGE_O_RDONLY, &f), -EISDIR);
    EXPECT(pstorage_open(c, file_path, PSTORAGE_O_RDWR | PSTORAGE_O_CREAT | PSTORAGE_O_EXCL, &f), 0);
    EXPECT(pstorage_close(f), 0);
    EXPECT(pstorage_open(c, file_path, PSTORAGE_O_RDWR | PSTORAGE_O_CREAT | PSTORAGE_O_EXCL, &f),
           -EEXIST);
    EXPECT(pstorage_opendir(c, file_path, &d), -ENOTDIR);
    snprintf(path, sizeof path, "%s/file/below", dir);
    EXPECT(pstorage_mkdir(c, path, 0), -ENOTDIR);
    EXPECT(pstorage_stat(c, path, &st), -ENOTDIR);
    snprintf(path, sizeof path, "%s/sub/x", dir);
    EXPECT(pstorage_mkdir(c, path, 0), 0);
    EXPECT(pstorage_unlink(c, sub), -ENOTEMPTY);
    EXPECT(pstorage_unlink(c, path), 0);
    EXPECT(pstorage_unlink(c, "/"), -EINVAL);

    /* Open flags. */
    EXPECT(pstorage_open(c, file_path, PSTORAGE_O_CREAT, &f), -EINVAL);
    EXPECT(pstorage_open(c, file_path, PSTORAGE_O_TRUNC, &f), -EINVAL);
    EXPECT(pstorage_open(c, file_path, PSTORAGE_O_RDWR | PSTORAGE_O_EXCL, &f), -EINVAL);
    EXPECT(pstorage_open(c, file_path, 0x40, &f), -EINVAL);

    /* Attributes. */
    attrs = (pstorage_attrs_t){.replicas_norm = 0, .replicas_min = 1};
    EXPECT(pstorage_set_attr(c, file_path, &attrs, 0), -EINVAL);
    attrs = (pstorage_attrs_t){.replicas_norm = 2, .replicas_min = 3};
    EXPECT(pstorage_set_attr(c, file_path, &attrs, 0), -EINVAL);
    attrs = (pstorage_attrs_t){.replicas_norm = 16, .replicas_min = 1};
    EXPECT(pstorage_set_attr(c, file_path, &attrs, 0), -EINVAL);
    attrs = (pstorage_attrs_t){.replicas_norm = 300, .replicas_min = 1};
    EXPECT(pstorage_set_attr(c, file_path, &attrs, 0), -EINVAL);
    attrs = (pstorage_attrs_t){.chunk_size = 1000};
    EXPECT(pstorage_set_attr(c, file_path, &attrs, 0), -EINVAL);
    attrs = (pstorage_attrs_t){.replicas_norm = 2, .replicas_min = 1};
    EXPECT(pstorage_set_attr(c, file_path, &attrs, 0x10), -EINVAL);
    EXPECT(pstorage_set_attr(c, dir, &attrs, PSTORAGE_ATTR_RECURSIVE), 0);
    EXPECT(pstorage_get_attr(c, file_path, &attrs), 0);
    EXPECT(attrs.replicas_norm * 100 + attrs.replicas_min, 201);

    /* Directory listings. */
    pstorage_dirent_t entry;
    EXPECT(pstorage_opendir(c, dir, &d), 0);
    EXPECT(pstorage_readdir(d, NULL), -EINVAL);
    EXPECT(pstorage_readdir(d, &entry), 1);
    EXPECT(strcmp(entry.name, "file"), 0);
    EXPECT(pstorage_readdir(d, &entry), 1);
    EXPECT(strcmp(entry.name, "sub"), 0);
    EXPECT(entry.stat.kind, PSTORAGE_KIND_DIR);
    EXPECT(pstorage_readdir(d, &entry), 0);
    EXPECT(pstorage_readdir(d, &entry), 0);
    EXPECT(pstorage_closedir(d), 0);
    EXPECT(pstorage_closedir(d), -EBADF);
    EXPECT(pstorage_readdir(d, &entry), -EBADF);
    EXPECT(pstorage_unlink(c, sub), 0);
}

static void check_io(pstorage_cluster_t *c, const char *dir)
{
    char path[512];
    snprintf(path, sizeof path, "%s/io", dir);
    char buf[8192];
    memset(buf, 'x', sizeof buf);
    struct iovec iov[2] = {{.iov_base = buf, .iov_len = 10}, {.iov_base = buf + 10, .iov_len = 10}};
    struct iovec null_iov = {.iov_base = NULL, .iov_len = 10};
    pstorage_stat_t st;
    uint64_t size;
    pstorage_file_t *w, *r, *r2;

    REQUIRE(pstorage_open(c, path, PSTORAGE_O_RDWR | PSTORAGE_O_CREAT | PSTORAGE_O_TRUNC, &w));
    /* NULL buffers. */
    EXPECT(pstorage_pwrite(w, NULL, 10, 0), -EINVAL);
    EXPECT(pstorage_pread(w, NULL, 10, 0), -EINVAL);
    EXPECT(pstorage_pwrite(w, NULL, 0, 0), 0);
    EXPECT(pstorage_pread(w, NULL, 0, 0), 0);
    EXPECT(pstorage_preadv(w, NULL, 1, 0), -EINVAL);
    EXPECT(pstorage_pwritev(w, NULL, 1, 0), -EINVAL);
    EXPECT(pstorage_preadv(w, iov, -1, 0), -EINVAL);
    EXPECT(pstorage_pwritev(w, iov, PSTORAGE_IOV_MAX + 1, 0), -EINVAL);
    EXPECT(pstorage_pwritev(w, &null_iov, 1, 0), -EINVAL);
    EXPECT(pstorage_preadv(w, &null_iov, 1, 0), -EINVAL);
    EXPECT(pstorage_fstat(w, NULL), -EINVAL);
    EXPECT(pstorage_get_size(w, NULL), -EINVAL);
    /* Beyond the maximum file size (16 TiB). */
    EXPECT(pstorage_pwrite(w, buf, 10, 1ull << 44), -EFBIG);
    EXPECT(pstorage_pread(w, buf, 10, 1ull << 44), -EFBIG);
    EXPECT(pstorage_truncate(w, (1ull << 44) + 1), -EFBIG);
    /* What works, so the lease checks below are meaningful. */
    EXPECT(pstorage_pwrite(w, buf, 100, 0), 100);
    EXPECT(pstorage_pwritev(w, iov, 2, 100), 20);
    EXPECT(pstorage_get_size(w, &size), 0);
    EXPECT(size, 120);
    EXPECT(pstorage_pread(w, buf, sizeof buf, 0), 120);
    EXPECT(pstorage_pread(w, buf, sizeof buf, 120), 0);
    EXPECT(pstorage_pread(w, buf, sizeof buf, 1000000), 0);
    EXPECT(pstorage_preadv(w, iov, 2, 110), 10);
    EXPECT(pstorage_flush(w), 0);

    /* A second writer, and readers while a writer holds the file: -EBUSY. */
    pstorage_file_t *w2;
    EXPECT(pstorage_open(c, path, PSTORAGE_O_RDWR, &w2), -EBUSY);
    EXPECT(pstorage_open(c, path, PSTORAGE_O_RDONLY, &r), -EBUSY);
    EXPECT(pstorage_unlink(c, path), -EBUSY);
    pstorage_cluster_t *other;
    REQUIRE(pstorage_connect(getenv("TEST_CLUSTER_NAME"), NULL, &other));
    EXPECT(pstorage_open(other, path, PSTORAGE_O_RDWR, &w2), -EBUSY);
    EXPECT(pstorage_disconnect(c), -EBUSY); /* files are open */
    EXPECT(pstorage_close(w), 0);
    EXPECT(pstorage_close(w), -EBADF);
    EXPECT(pstorage_pwrite(w, buf, 10, 0), -EBADF);
    EXPECT(pstorage_flush(w), -EBADF);

    /* Under a read lease every change is -EBADF, and writers are -EBUSY. */
    REQUIRE(pstorage_open(c, path, PSTORAGE_O_RDONLY, &r));
    REQUIRE(pstorage_open(other, path, PSTORAGE_O_RDONLY, &r2));
    EXPECT(pstorage_pwrite(r, buf, 10, 0), -EBADF);
    EXPECT(pstorage_pwritev(r, iov, 2, 0), -EBADF);
    EXPECT(pstorage_truncate(r, 0), -EBADF);
    EXPECT(pstorage_flush(r), 0);
    EXPECT(pstorage_fstat(r, &st), 0);
    EXPECT(st.size, 120);
    EXPECT(pstorage_pread(r2, buf, sizeof buf, 0), 120);
    EXPECT(pstorage_open(c, path, PSTORAGE_O_RDWR, &w2), -EBUSY);
    EXPECT(pstorage_open(other, path, PSTORAGE_O_RDWR | PSTORAGE_O_TRUNC, &w2), -EBUSY);

    /* Asynchronous writes under a read lease fail through the completion. */
    pstorage_completion_t *comp;
    REQUIRE(pstorage_aio_create_completion(NULL, NULL, &comp));
    EXPECT(pstorage_aio_write(r, 0, buf, 10, comp), 0);
    EXPECT(pstorage_aio_wait_for_complete(comp), 0);
    EXPECT(pstorage_aio_get_return_value(comp), -EBADF);
    EXPECT(strstr(pstorage_last_error(), "read lease") != NULL, 1);
    EXPECT(pstorage_aio_release(comp), 0);
    REQUIRE(pstorage_aio_create_completion(NULL, NULL, &comp));
    EXPECT(pstorage_aio_discard(r, 0, 4096, comp), 0);
    EXPECT(pstorage_aio_wait_for_complete(comp), 0);
    EXPECT(pstorage_aio_get_return_value(comp), -EBADF);
    EXPECT(pstorage_aio_release(comp), 0);

    EXPECT(pstorage_close(r2), 0);
    EXPECT(pstorage_disconnect(other), 0);
    EXPECT(pstorage_close(r), 0);
    EXPECT(pstorage_unlink(c, path), 0);
}

struct callback_probe {
    pstorage_cluster_t *cluster;
    pstorage_file_t *file;
    pstorage_completion_t *nested;
    char *buf;
    long flush_rc, close_rc, wait_rc, open_rc, disconnect_rc, stat_rc, value_rc, nested_rc;
    long release_self_rc;
    int calls;
};

static void probe_callback(pstorage_completion_t *comp, void *arg)
{
    struct callback_probe *p = arg;
    pstorage_file_t *f;
    pstorage_stat_t st;
    p->calls++;
    /* Blocking calls are refused on library threads... */
    p->flush_rc = pstorage_flush(p->file);
    p->close_rc = pstorage_close(p->file);
    p->wait_rc = pstorage_aio_wait_for_complete(comp);
    p->open_rc = pstorage_open(p->cluster, "/", PSTORAGE_O_RDONLY, &f);
    p->disconnect_rc = pstorage_disconnect(p->cluster);
    p->stat_rc = pstorage_stat(p->cluster, "/", &st);
    /* ...non-blocking ones work, including a new submission. */
    p->value_rc = pstorage_aio_get_return_value(comp);
    p->nested_rc = pstorage_aio_read(p->file, 0, p->buf, 10, p->nested);
}

static void release_self(pstorage_completion_t *comp, void *arg)
{
    struct callback_probe *p = arg;
    p->release_self_rc = pstorage_aio_release(comp);
    p->calls++;
}

static void check_aio(pstorage_cluster_t *c, const char *dir)
{
    char path[512];
    snprintf(path, sizeof path, "%s/aio", dir);
    char buf[4096];
    memset(buf, 'a', sizeof buf);
    pstorage_file_t *f;
    pstorage_completion_t *comp, *comp2;
    void *arg;

    REQUIRE(pstorage_open(c, path, PSTORAGE_O_RDWR | PSTORAGE_O_CREAT | PSTORAGE_O_TRUNC, &f));

    /* Completion misuse. */
    REQUIRE(pstorage_aio_create_completion((void *)0x1234, NULL, &comp));
    EXPECT(pstorage_aio_get_arg(comp, NULL), -EINVAL);
    EXPECT(pstorage_aio_get_arg(comp, &arg), 0);
    EXPECT(arg == (void *)0x1234, 1);
    EXPECT(pstorage_aio_get_return_value(comp), -EINVAL); /* never submitted */
    EXPECT(pstorage_aio_wait_for_complete(comp), -EINVAL);
    EXPECT(pstorage_aio_is_complete(comp), 0);
    EXPECT(pstorage_aio_read(f, 0, NULL, 10, comp), -EINVAL);
    EXPECT(pstorage_aio_write(f, 0, NULL, 10, comp), -EINVAL);
    EXPECT(pstorage_aio_read(f, 0, buf, 10, NULL), -EINVAL);
    EXPECT(pstorage_aio_write(f, 0, buf, sizeof buf, comp), 0);
    EXPECT(pstorage_aio_write(f, 0, buf, sizeof buf, comp), -EINVAL); /* already used */
    EXPECT(pstorage_aio_wait_for_complete(comp), 0);
    EXPECT(pstorage_aio_is_complete(comp), 1);
    EXPECT(pstorage_aio_get_return_value(comp), (long)sizeof buf);
    EXPECT(pstorage_aio_release(comp), 0);
    EXPECT(pstorage_aio_release(comp), -EBADF);
    EXPECT(pstorage_aio_get_return_value(comp), -EBADF);

    /* Errors of the operation arrive through the completion. */
    REQUIRE(pstorage_aio_create_completion(NULL, NULL, &comp));
    EXPECT(pstorage_aio_read(f, 1ull << 44, buf, 10, comp), 0);
    EXPECT(pstorage_aio_wait_for_complete(comp), 0);
    EXPECT(pstorage_aio_get_return_value(comp), -EFBIG);
    EXPECT(pstorage_aio_release(comp), 0);

    /* Callbacks: blocking calls are refused with -EDEADLK. */
    struct callback_probe probe = {.cluster = c, .file = f, .buf = buf};
    REQUIRE(pstorage_aio_create_completion(NULL, NULL, &probe.nested));
    REQUIRE(pstorage_aio_create_completion(&probe, probe_callback, &comp));
    EXPECT(pstorage_aio_flush(f, comp), 0);
    EXPECT(pstorage_aio_wait_for_complete(comp), 0);
    EXPECT(probe.calls, 1);
    EXPECT(probe.flush_rc, -EDEADLK);
    EXPECT(probe.close_rc, -EDEADLK);
    EXPECT(probe.wait_rc, -EDEADLK);
    EXPECT(probe.open_rc, -EDEADLK);
    EXPECT(probe.disconnect_rc, -EDEADLK);
    EXPECT(probe.stat_rc, -EDEADLK);
    EXPECT(probe.value_rc, 0);
    EXPECT(probe.nested_rc, 0);
    EXPECT(pstorage_aio_wait_for_complete(probe.nested), 0);
    EXPECT(pstorage_aio_get_return_value(probe.nested), 10);
    EXPECT(pstorage_aio_release(probe.nested), 0);
    EXPECT(pstorage_aio_release(comp), 0);

    /* A callback may release its own completion. */
    probe.calls = 0;
    REQUIRE(pstorage_aio_create_completion(&probe, release_self, &comp));
    EXPECT(pstorage_aio_discard(f, 0, 4096, comp), 0);
    for (int i = 0; i < 6000 && probe.calls == 0; i++)
        usleep(10000);
    EXPECT(probe.calls, 1);
    EXPECT(probe.release_self_rc, 0);
    EXPECT(pstorage_aio_is_complete(comp), -EBADF);
    EXPECT(pstorage_pread(f, buf, 10, 0), 10);
    EXPECT(buf[0] == 0 && buf[9] == 0, 1); /* discarded */

    /* Poll mode: completions without a callback come through the event fd. */
    pstorage_completion_t *ready[4];
    EXPECT(pstorage_poll_io_events(c, NULL, 4), -EINVAL);
    EXPECT(pstorage_poll_io_events(c, ready, -1), -EINVAL);
    int efd = pstorage_cluster_event_fd(c);
    EXPECT(efd >= 0, 1);
    EXPECT(pstorage_cluster_event_fd(c), efd);
    EXPECT(pstorage_poll_io_events(c, ready, 4), 0);
    REQUIRE(pstorage_aio_create_completion((void *)1, NULL, &comp));
    REQUIRE(pstorage_aio_create_completion((void *)2, NULL, &comp2));
    EXPECT(pstorage_aio_write(f, 8192, buf, 100, comp), 0);
    EXPECT(pstorage_aio_read(f, 0, buf, 100, comp2), 0);
    int got = 0;
    for (int tries = 0; got < 2 && tries < 120; tries++) {
        struct pollfd p = {.fd = efd, .events = POLLIN};
        if (poll(&p, 1, 1000) > 0)
            got += pstorage_poll_io_events(c, ready + got, 4 - got);
    }
    EXPECT(got, 2);
    for (int i = 0; i < got; i++) {
        EXPECT(pstorage_aio_get_arg(ready[i], &arg), 0);
        EXPECT(pstorage_aio_get_return_value(ready[i]), arg == (void *)1 ? 100 : 100);
        EXPECT(pstorage_aio_release(ready[i]), 0);
    }
    struct pollfd p = {.fd = efd, .events = POLLIN};
    EXPECT(poll(&p, 1, 0), 0); /* drained: no longer readable */

    EXPECT(pstorage_close(f), 0);
    EXPECT(pstorage_aio_read(f, 0, buf, 10, comp), -EBADF);
    EXPECT(pstorage_unlink(c, path), 0);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s CLUSTER\n", argv[0]);
        return 2;
    }
    const char *name = argv[1];
    setenv("TEST_CLUSTER_NAME", name, 1);
    EXPECT(pstorage_last_error() != NULL, 1);

    check_bad_handles();
    check_connect(name);

    pstorage_cluster_t *c;
    REQUIRE(pstorage_connect(name, NULL, &c));
    char dir[64];
    snprintf(dir, sizeof dir, "/test-errors-%d", (int)getpid());
    REQUIRE(pstorage_mkdir(c, dir, 0));
    check_namespace(c, dir);
    check_io(c, dir);
    check_aio(c, dir);
    char file_path[128];
    snprintf(file_path, sizeof file_path, "%s/file", dir);
    EXPECT(pstorage_unlink(c, file_path), 0);
    EXPECT(pstorage_unlink(c, dir), 0);
    EXPECT(pstorage_disconnect(c), 0);
    EXPECT(pstorage_disconnect(c), -EBADF);

    printf("test_errors: %d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
