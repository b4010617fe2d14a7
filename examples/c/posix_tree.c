/*
 * posix_tree: the POSIX namespace through libpstorage.
 *
 *   posix_tree CLUSTER [DIR]
 *
 * Under DIR (default /posix): a symbolic link and its target, a hard link
 * (two names, one inode, a link count of 2), a FIFO and a character device,
 * chmod/chown/utimensat with nanoseconds and UTIME_OMIT, extended
 * attributes (set, get, list, replace, remove, and their errors), and
 * renameat2's exchange and no-replace. Every result is checked; exits 0 and
 * prints "posix_tree: ok" on success, 1 with libpstorage's message on the
 * first failure.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>

#include <pstorage.h>

static int fail(const char *what, long rc)
{
    fprintf(stderr, "posix_tree: %s failed: %s (%ld)\n", what, pstorage_last_error(), rc);
    return 1;
}

#define TRY(call)                                                                                  \
    do {                                                                                           \
        long rc_ = (long)(call);                                                                   \
        if (rc_ < 0)                                                                               \
            return fail(#call, rc_);                                                               \
    } while (0)

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "posix_tree: %s:%d: %s does not hold\n", __FILE__, __LINE__, #cond);   \
            return 1;                                                                              \
        }                                                                                          \
    } while (0)

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s CLUSTER [DIR]\n", argv[0]);
        return 2;
    }
    const char *dir = argc == 3 ? argv[2] : "/posix";
    char file[512], link[512], hard[512], fifo[512], tty[512], other[512];
    snprintf(file, sizeof file, "%s/file", dir);
    snprintf(link, sizeof link, "%s/link", dir);
    snprintf(hard, sizeof hard, "%s/hard", dir);
    snprintf(fifo, sizeof fifo, "%s/fifo", dir);
    snprintf(tty, sizeof tty, "%s/tty", dir);
    snprintf(other, sizeof other, "%s/other", dir);

    pstorage_cluster_t *c;
    TRY(pstorage_connect(argv[1], NULL, &c));
    TRY(pstorage_mkdir(c, dir, PSTORAGE_MKDIR_PARENTS));

    /* A file, a symbolic link to it, a hard link. */
    TRY(pstorage_mknod(c, file, S_IFREG | 0640, 0));
    TRY(pstorage_symlink(c, "file", link));
    char target[64];
    ssize_t n = pstorage_readlink(c, link, target, sizeof target);
    CHECK(n == 4 && memcmp(target, "file", 4) == 0);
    CHECK(pstorage_readlink(c, link, target, 2) == 2); /* truncated, as readlink(2) */
    CHECK(pstorage_readlink(c, file, target, sizeof target) == -EINVAL);
    pstorage_stat_t st, st2;
    TRY(pstorage_lstat(c, link, &st));
    CHECK(st.kind == PSTORAGE_KIND_SYMLINK && st.size == 4 && st.mode == 0777);
    TRY(pstorage_link(c, file, hard));
    TRY(pstorage_stat(c, file, &st));
    TRY(pstorage_stat(c, hard, &st2));
    CHECK(st.ino == st2.ino && st.nlink == 2 && st2.nlink == 2);
    CHECK(pstorage_link(c, dir, other) == -EACCES);
    CHECK(pstorage_link(c, file, hard) == -EEXIST);

    /* Special files. */
    TRY(pstorage_mknod(c, fifo, S_IFIFO | 0600, 0));
    TRY(pstorage_mknod(c, tty, S_IFCHR | 0620, 0x0501));
    TRY(pstorage_stat(c, tty, &st));
    CHECK(st.kind == PSTORAGE_KIND_CHAR_DEVICE && st.rdev == 0x0501 && st.mode == 0620);
    CHECK(pstorage_mknod(c, other, S_IFDIR | 0755, 0) == -EINVAL);

    /* chmod, chown, utimensat. */
    TRY(pstorage_chmod(c, file, 04755));
    TRY(pstorage_chown(c, file, 1234, PSTORAGE_OWNER_UNCHANGED));
    TRY(pstorage_stat(c, file, &st));
    CHECK(st.uid == 1234 && st.mode == 0755); /* chown cleared set-user-id */
    struct timespec times[2] = {
        {.tv_sec = -100, .tv_nsec = 5},
        {.tv_sec = 1700000000, .tv_nsec = 123456789},
    };
    TRY(pstorage_utimens(c, file, times));
    TRY(pstorage_stat(c, file, &st));
    CHECK(st.atime_sec == -100 && st.atime_nsec == 5);
    CHECK(st.mtime_sec == 1700000000 && st.mtime_nsec == 123456789);
    times[0].tv_nsec = UTIME_OMIT;
    times[1].tv_nsec = UTIME_NOW;
    TRY(pstorage_utimens(c, file, times));
    TRY(pstorage_stat(c, file, &st2));
    CHECK(st2.atime_sec == -100 && st2.mtime_sec > 1700000000);
    times[1].tv_nsec = 1000000000;
    CHECK(pstorage_utimens(c, file, times) == -EINVAL);

    /* Extended attributes. */
    TRY(pstorage_setxattr(c, file, "user.color", "blue", 4, XATTR_CREATE));
    CHECK(pstorage_setxattr(c, file, "user.color", "red", 3, XATTR_CREATE) == -EEXIST);
    CHECK(pstorage_setxattr(c, file, "user.none", "x", 1, XATTR_REPLACE) == -ENODATA);
    CHECK(pstorage_setxattr(c, file, "system.posix_acl_access", "x", 1, 0) == -EOPNOTSUPP);
    TRY(pstorage_setxattr(c, file, "trusted.empty", NULL, 0, 0));
    char value[16];
    CHECK(pstorage_getxattr(c, file, "user.color", NULL, 0) == 4);
    CHECK(pstorage_getxattr(c, file, "user.color", value, 2) == -ERANGE);
    n = pstorage_getxattr(c, file, "user.color", value, sizeof value);
    CHECK(n == 4 && memcmp(value, "blue", 4) == 0);
    CHECK(pstorage_getxattr(c, file, "user.none", value, sizeof value) == -ENODATA);
    char names[64];
    n = pstorage_listxattr(c, file, names, sizeof names);
    CHECK(n == (ssize_t)sizeof "trusted.empty\0user.color");
    CHECK(memcmp(names, "trusted.empty\0user.color\0", (size_t)n) == 0);
    TRY(pstorage_removexattr(c, file, "trusted.empty"));
    CHECK(pstorage_removexattr(c, file, "trusted.empty") == -ENODATA);

    /* renameat2: exchange a file and a FIFO, no-replace. */
    TRY(pstorage_rename2(c, file, fifo, PSTORAGE_RENAME_EXCHANGE));
    TRY(pstorage_stat(c, fifo, &st));
    CHECK(st.kind == PSTORAGE_KIND_FILE && st.ino == st2.ino);
    CHECK(pstorage_rename2(c, fifo, file, PSTORAGE_RENAME_NOREPLACE) == -EEXIST);
    CHECK(pstorage_rename2(c, fifo, other, PSTORAGE_RENAME_EXCHANGE) == -ENOENT);
    CHECK(pstorage_rename2(c, fifo, file, 3) == -EINVAL);
    TRY(pstorage_rename2(c, fifo, other, PSTORAGE_RENAME_NOREPLACE));

    /* A name goes, the node stays with its other one. */
    TRY(pstorage_unlink(c, hard));
    TRY(pstorage_stat(c, other, &st));
    CHECK(st.nlink == 1);

    TRY(pstorage_disconnect(c));
    printf("posix_tree: ok\n");
    return 0;
}
