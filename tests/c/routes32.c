/* A 32-bit program (built with gcc -m32 -static) for tests/tests/routes.rs: opens ARG and writes
 * "ia32 ARG" to the terminal, through compat system calls the syscall tracepoints do not see. */
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) return 1;
    close(fd);
    write(1, "ia32 ", 5);
    write(1, argv[1], strlen(argv[1]));
    write(1, "\n", 1);
    return 0;
}
