"""cffi declarations for the syscall layer (ABI mode: no compiler needed): libc's, and
libseccomp's (seccomp_*), which syscalls.py opens only for a contained run.

`pip install` runs this through setup.py's cffi_modules and writes the
out-of-line module builder/kernel/_ffi.py, which imports in under a
millisecond. `builder.kernel.syscalls` falls back to parsing CDEF at import time
(~35 ms) when that module has not been generated, e.g. in a bare checkout.
"""
from cffi import FFI

CDEF = """
struct mount_attr {
    uint64_t attr_set;
    uint64_t attr_clr;
    uint64_t propagation;
    uint64_t userns_fd;
};
struct open_how {
    uint64_t flags;
    uint64_t mode;
    uint64_t resolve;
};
struct loop_info64 {
    uint64_t lo_device;
    uint64_t lo_inode;
    uint64_t lo_rdevice;
    uint64_t lo_offset;
    uint64_t lo_sizelimit;
    uint32_t lo_number;
    uint32_t lo_encrypt_type;
    uint32_t lo_encrypt_key_size;
    uint32_t lo_flags;
    uint8_t lo_file_name[64];
    uint8_t lo_crypt_name[64];
    uint8_t lo_encrypt_key[32];
    uint64_t lo_init[2];
};
struct loop_config {
    uint32_t fd;
    uint32_t block_size;
    struct loop_info64 info;
    uint64_t reserved[8];
};
struct cap_header {
    uint32_t version;
    int pid;
};
struct cap_data {
    uint32_t effective;
    uint32_t permitted;
    uint32_t inheritable;
};
struct scmp_arg_cmp {
    unsigned int arg;
    int op;
    uint64_t datum_a;
    uint64_t datum_b;
};
void *seccomp_init(uint32_t def_action);
int seccomp_rule_add_array(void *ctx, uint32_t action, int syscall, unsigned int arg_cnt,
                           const struct scmp_arg_cmp *arg_array);
int seccomp_syscall_resolve_name(const char *name);
int seccomp_export_bpf(void *ctx, int fd);
struct sock_filter {
    uint16_t code;
    uint8_t jt;
    uint8_t jf;
    uint32_t k;
};
struct sock_fprog {
    unsigned short len;
    struct sock_filter *filter;
};
void seccomp_release(void *ctx);
long syscall(long number, ...);
int prctl(int option, ...);
int capset(struct cap_header *hdrp, const struct cap_data *datap);
int sethostname(const char *name, size_t len);
int unshare(int flags);
int setns(int fd, int nstype);
int umount2(const char *target, int flags);
int ioctl(int fd, unsigned long request, ...);
int fsopen(const char *fs_name, unsigned int flags);
int fsconfig(int fd, unsigned int cmd, const char *key, const void *value, int aux);
int fsmount(int fd, unsigned int flags, unsigned int attr_flags);
int open_tree(int dfd, const char *filename, unsigned int flags);
int move_mount(int from_dfd, const char *from_path, int to_dfd, const char *to_path, unsigned int flags);
int mount_setattr(int dfd, const char *path, unsigned int flags, struct mount_attr *attr, size_t size);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("builder.kernel._ffi", None)

if __name__ == "__main__":
    ffibuilder.compile(verbose=False)
