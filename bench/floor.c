/* The syscall floor: replays an nsbuild plan (exported by bench.py in a flat
 * line format) with the same syscalls, in C, N times, and prints the median
 * time per build in microseconds. No Python, no rendering, no error text.
 *
 * Line: where \t call \t out-slot \t ok-errno \t args...   (tab-separated)
 * Args: f:N fd slot (-100 = AT_FDCWD), i:N integer, s:HEX string, n NULL,
 *       p:N "/proc/self/fd/<fd of slot N>".
 * A block of "child" steps (the plan's namespace block) runs in this process, which then goes
 * back to its own mount namespace (setns) and cwd, as the executor does: fewer syscalls than
 * forking a child.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAXSTEPS 512
#define MAXARGS 8
#define MAXSLOTS 512

struct arg { char kind; long num; char *str; };
struct step { int child; char call[24]; int out; int ok; int nargs; struct arg a[MAXARGS]; };
struct mount_attr_ { uint64_t set, clr, prop, userns; };
struct open_how_ { uint64_t flags, mode, resolve; };

static struct step steps[MAXSTEPS];
static int nsteps;
static int slot[MAXSLOTS];
static char fdpath[MAXARGS][64];

static char *unhex(const char *h) {
    size_t n = strlen(h) / 2;
    char *s = malloc(n + 1);
    for (size_t i = 0; i < n; i++) sscanf(h + 2 * i, "%2hhx", (unsigned char *)&s[i]);
    s[n] = 0;
    return s;
}

static void load(const char *file) {
    FILE *f = fopen(file, "r");
    char line[65536];
    if (!f) { perror(file); exit(2); }
    while (fgets(line, sizeof line, f)) {
        struct step *s = &steps[nsteps++];
        char *save, *tok = strtok_r(line, "\t\n", &save);
        s->child = strcmp(tok, "child") == 0;
        strcpy(s->call, strtok_r(NULL, "\t\n", &save));
        s->out = atoi(strtok_r(NULL, "\t\n", &save));
        s->ok = atoi(strtok_r(NULL, "\t\n", &save));
        while ((tok = strtok_r(NULL, "\t\n", &save))) {
            struct arg *a = &s->a[s->nargs++];
            a->kind = tok[0];
            if (a->kind == 's') a->str = unhex(tok + 2);
            else if (a->kind != 'n') a->num = strtol(tok + 2, NULL, 10);
        }
    }
    fclose(f);
}

static long fd(struct arg *a) { return a->num == -100 ? AT_FDCWD : slot[a->num]; }

static long val(struct step *s, int i) {
    struct arg *a = &s->a[i];
    switch (a->kind) {
    case 'f': return fd(a);
    case 'i': return a->num;
    case 's': return (long)a->str;
    case 'p': snprintf(fdpath[i], 64, "/proc/self/fd/%d", slot[a->num]); return (long)fdpath[i];
    default: return 0;
    }
}

static long run1(struct step *s) {
    long v[MAXARGS];
    for (int i = 0; i < s->nargs; i++) v[i] = val(s, i);
    const char *c = s->call;
    if (!strcmp(c, "fsopen")) return syscall(SYS_fsopen, v[0], v[1]);
    if (!strcmp(c, "fsconfig")) return syscall(SYS_fsconfig, v[0], v[1], v[2], v[3], v[4]);
    if (!strcmp(c, "fsmount")) return syscall(SYS_fsmount, v[0], v[1], v[2]);
    if (!strcmp(c, "open_tree")) return syscall(SYS_open_tree, v[0], v[1], v[2]);
    if (!strcmp(c, "move_mount")) return syscall(SYS_move_mount, v[0], v[1], v[2], v[3], v[4]);
    if (!strcmp(c, "mount_setattr")) {
        struct mount_attr_ at = { v[3], v[4], v[5], 0 };
        return syscall(SYS_mount_setattr, v[0], v[1], v[2], &at, sizeof at);
    }
    if (!strcmp(c, "openat")) return openat(v[0], (char *)v[1], v[2], v[3]);
    if (!strcmp(c, "openat2")) {
        struct open_how_ how = { v[2], 0, v[3] };
        return syscall(SYS_openat2, v[0], v[1], &how, sizeof how);
    }
    if (!strcmp(c, "mkdirat")) return mkdirat(v[0], (char *)v[1], v[2]);
    if (!strcmp(c, "mknodat")) return mknodat(v[0], (char *)v[1], v[2], v[3]);
    if (!strcmp(c, "symlinkat")) return symlinkat((char *)v[0], v[1], (char *)v[2]);
    if (!strcmp(c, "unlinkat")) return unlinkat(v[0], (char *)v[1], v[2]);
    if (!strcmp(c, "fchownat")) return fchownat(v[0], (char *)v[1], v[2], v[3], v[4]);
    if (!strcmp(c, "fchmod")) return fchmod(v[0], v[1]);
    if (!strcmp(c, "fchown")) return fchown(v[0], v[1], v[2]);
    if (!strcmp(c, "write")) return write(v[0], (char *)v[1], strlen((char *)v[1]));
    if (!strcmp(c, "setns")) return setns(v[0], v[1]);
    if (!strcmp(c, "unshare")) return unshare(v[0]);
    if (!strcmp(c, "fchdir")) return fchdir(v[0]);
    if (!strcmp(c, "chdir")) return chdir((char *)v[0]);
    if (!strcmp(c, "pivot_root")) return syscall(SYS_pivot_root, v[0], v[1]);
    if (!strcmp(c, "umount2")) return umount2((char *)v[0], v[1]);
    fprintf(stderr, "unknown call %s\n", c);
    exit(2);
}

static void step(int i) {
    long r = run1(&steps[i]);
    if (r < 0 && errno != steps[i].ok) {
        fprintf(stderr, "step %d (%s) failed: %s\n", i + 1, steps[i].call, strerror(errno));
        exit(1);
    }
    if (steps[i].out >= 0) slot[steps[i].out] = r;
}

/* Runs steps [i, end) (the namespace block) in this process, then goes back to its own
 * mount namespace and cwd, as nsbuild's executor does in a single-threaded process. */
static int inline_block(int i) {
    int end = i;
    while (end < nsteps && steps[end].child) end++;
    int ns = open("/proc/self/ns/mnt", O_RDONLY | O_CLOEXEC);
    int root = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC), cwd = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    for (int k = i; k < end; k++) step(k);
    if (setns(ns, CLONE_NEWNS) < 0) { perror("setns home"); exit(1); }
    struct stat here, r;
    stat("/", &here);
    fstat(root, &r);
    fchdir(cwd);
    close(ns); close(root); close(cwd);
    return end;
}

static int cmp(const void *a, const void *b) { double x = *(double *)a, y = *(double *)b; return (x > y) - (x < y); }

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: floor PLAN N RESULT-SLOT\n"); return 2; }
    load(argv[1]);
    int n = atoi(argv[2]), result = atoi(argv[3]);
    double *us = malloc(n * sizeof *us);
    for (int it = 0; it < n; it++) {
        struct timespec a, b;
        for (int k = 0; k < MAXSLOTS; k++) slot[k] = -1;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (int i = 0; i < nsteps;) {
            if (steps[i].child) i = inline_block(i);
            else step(i++);
        }
        for (int k = 0; k < MAXSLOTS; k++) if (slot[k] >= 0) close(slot[k]);  /* result included */
        clock_gettime(CLOCK_MONOTONIC, &b);
        us[it] = (b.tv_sec - a.tv_sec) * 1e6 + (b.tv_nsec - a.tv_nsec) / 1e3;
    }
    qsort(us, n, sizeof *us, cmp);
    printf("%.1f %.1f %.1f\n", us[n / 2], us[0], us[n - 1]);
    (void)result;
    return 0;
}
