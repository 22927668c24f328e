/* Routes to the terminal and to files other than write(2) and open(2), for tests/tests/routes.rs:
 * each mode takes one route, checks the kernel's answer, and prints "done <mode>" with write(2)
 * (which is captured) so that the test knows it finished. Exit status 0 when the route behaved as
 * the mode expects, 1 otherwise (with a message on stderr). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/uio.h>
#include <unistd.h>

static int fail(const char *what) {
    fprintf(stderr, "routes: %s: %s\n", what, strerror(errno));
    return 1;
}

static int done(const char *mode) {
    char line[128];
    int n = snprintf(line, sizeof line, "done %s\n", mode);
    return write(1, line, n) == n ? 0 : 1;
}

/* The file's contents are the bytes to show. */
static int open_file(const char *path, off_t *size) {
    int fd = open(path, O_RDONLY);
    if (fd >= 0) *size = lseek(fd, 0, SEEK_END), lseek(fd, 0, SEEK_SET);
    return fd;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: routes MODE ARG\n");
        return 2;
    }
    const char *mode = argv[1], *arg = argv[2];
    off_t size = 0;
    if (!strcmp(mode, "pwritev2")) {
        /* offset -1: the file position, as writev; accepted by terminals. */
        struct iovec iov[2] = {{(void *)arg, strlen(arg)}, {"\n", 1}};
        if (pwritev2(1, iov, 2, -1, 0) != (ssize_t)strlen(arg) + 1) return fail("pwritev2");
    } else if (!strcmp(mode, "pwrite64")) {
        /* Terminals are not seekable: ESPIPE, nothing written. */
        if (pwrite(1, arg, strlen(arg), 0) != -1 || errno != ESPIPE) return fail("pwrite64 should fail with ESPIPE");
        struct iovec iov = {(void *)arg, strlen(arg)};
        if (pwritev(1, &iov, 1, 0) != -1 || errno != ESPIPE) return fail("pwritev should fail with ESPIPE");
    } else if (!strcmp(mode, "sendfile")) {
        int fd = open_file(arg, &size);
        if (fd < 0) return fail("open");
        if (sendfile(1, fd, NULL, size) != size) return fail("sendfile");
    } else if (!strcmp(mode, "splice")) {
        int fd = open_file(arg, &size), p[2];
        if (fd < 0 || pipe(p)) return fail("open");
        if (splice(fd, NULL, p[1], NULL, size, 0) != size) return fail("splice to the pipe");
        if (splice(p[0], NULL, 1, NULL, size, 0) != size) return fail("splice to the terminal");
    } else if (!strcmp(mode, "vmsplice-tee")) {
        /* User memory into a pipe, duplicated into a second pipe, spliced to the terminal. */
        int a[2], b[2];
        if (pipe(a) || pipe(b)) return fail("pipe");
        size_t len = strlen(arg);
        struct iovec iov = {(void *)arg, len};
        if (vmsplice(a[1], &iov, 1, 0) != (ssize_t)len) return fail("vmsplice");
        if (tee(a[0], b[1], len, 0) != (ssize_t)len) return fail("tee");
        if (splice(b[0], NULL, 1, NULL, len, 0) != (ssize_t)len) return fail("splice to the terminal");
    } else if (!strcmp(mode, "copy_file_range")) {
        /* Only between regular files: a terminal is refused with EINVAL. */
        int fd = open_file(arg, &size);
        if (fd < 0) return fail("open");
        if (copy_file_range(fd, NULL, 1, NULL, size, 0) != -1 || errno != EINVAL)
            return fail("copy_file_range to a terminal should fail with EINVAL");
    } else if (!strcmp(mode, "open_by_handle_at")) {
        /* ARG is a file; its directory is the mount descriptor. A corrupted handle fails. */
        struct file_handle *handle = malloc(sizeof *handle + MAX_HANDLE_SZ);
        int mount_id;
        handle->handle_bytes = MAX_HANDLE_SZ;
        if (name_to_handle_at(AT_FDCWD, arg, handle, &mount_id, 0)) return fail("name_to_handle_at");
        int mount_fd = open("/", O_RDONLY | O_DIRECTORY);
        if (mount_fd < 0) return fail("open /");
        int fd = open_by_handle_at(mount_fd, handle, O_RDONLY);
        if (fd < 0) return fail("open_by_handle_at");
        handle->handle_type = 0x7fff;
        if (open_by_handle_at(mount_fd, handle, O_RDONLY) != -1) return fail("a corrupted handle opened a file");
    } else if (!strcmp(mode, "io_uring")) {
        /* An openat of ARG and a write of ARG's name to the terminal, through io_uring. */
        struct io_uring ring;
        if (io_uring_queue_init(4, &ring, 0)) return fail("io_uring_queue_init");
        struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
        io_uring_prep_openat(sqe, AT_FDCWD, arg, O_RDONLY, 0);
        sqe = io_uring_get_sqe(&ring);
        char line[4200];
        int n = snprintf(line, sizeof line, "uring %s\n", arg);
        io_uring_prep_write(sqe, 1, line, n, -1);
        if (io_uring_submit(&ring) != 2) return fail("io_uring_submit");
        for (int i = 0; i < 2; i++) {
            struct io_uring_cqe *cqe;
            if (io_uring_wait_cqe(&ring, &cqe)) return fail("io_uring_wait_cqe");
            if (cqe->res < 0) {
                errno = -cqe->res;
                return fail("io_uring request");
            }
            io_uring_cqe_seen(&ring, cqe);
        }
    } else {
        fprintf(stderr, "routes: unknown mode %s\n", mode);
        return 2;
    }
    return done(mode);
}
