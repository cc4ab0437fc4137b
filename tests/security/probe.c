/* What a process has, printed as words a test can look for: its ids, its effective
 * capabilities, whether setuid(0) works, and whether it can open each path named on the
 * command line.  Built static: the test images have no C library. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void caps(void)
{
    char line[256];
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "CapEff:", 7) || !strncmp(line, "CapPrm:", 7))
            fputs(line, stdout);
    fclose(f);
}

int main(int argc, char **argv)
{
    printf("ruid=%d euid=%d\n", (int)getuid(), (int)geteuid());
    caps();
    for (int i = 1; i < argc; i++) {
        int write = argv[i][0] == '+';
        const char *path = argv[i] + write;
        int fd = open(path, write ? O_WRONLY : O_RDONLY);
        if (fd < 0) {
            printf("%s %s: refused (%s)\n", write ? "write" : "read", path, strerror(errno));
            continue;
        }
        char buf[256] = "";
        ssize_t n = write ? 0 : read(fd, buf, sizeof buf - 1);
        printf("%s %s: OPENED %s\n", write ? "write" : "read", path, n > 0 ? buf : "");
        close(fd);
    }
    if (setuid(0) == 0)
        printf("setuid(0): GAINED euid=%d\n", (int)geteuid());
    else
        printf("setuid(0): refused (%s)\n", strerror(errno));
    return 0;
}
