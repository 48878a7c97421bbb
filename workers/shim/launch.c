/*
 * `berth-shim launch`: start a container, then serve its console (berth-shim.c).
 *
 * Started by the container driver (workers/drivers/container/spawn.py) with posix_spawn, so
 * the driver's large Python process is never forked. File descriptors:
 *   0, 1  /dev/null          2  the container's shim.log
 *   3     config (read to EOF): "key=value\0" entries, see struct config
 *   4     reports to the driver, one line each: "monitor <pid>", "pid1 <pid>", "root",
 *         then "ready" or "error <message>" at any point
 *   5     go-aheads from the driver (a stream socket), in whichever order they come: 'W' with
 *         the container's disk as a detached mount (SCM_RIGHTS: fsmount'ed, prepared, never in
 *         the host's mount table), 'N' (eth0 is configured, the pid files are written)
 *
 *   driver                    monitor (this process)              PID 1
 *   cgroups; posix_spawn -->  fork, the parent exits (the driver reaps it): nobody's child
 *   (thread) loop device,     setsid, "monitor <pid>"
 *   mount, layers             clone3(NEWUSER|NEWNS|NEWUTS|NEWIPC|NEWNET|NEWPID
 *                                    [|INTO_CGROUP]) ----------->  joins its v1 cgroups itself;
 *                                                                  waits for its ids
 *   <-- "pid1 <pid>"          uid_map/gid_map; idmapped clone
 *   veth + eth0, pid files,   of the image tree
 *   "N" ------------------->
 *   "W" + disk fd -------->   image and disk fds over a socket --> root inside; attaches the
 *                             (once 'N' is in) "X", queued ---->   image and the disk, mounts
 *                                                                  overlay, /proc, /sys, /dev,
 *                                                                  /run; masks; pivot_root;
 *   <-- "root"                <----------------- pty master+slave  console pty; reads "X":
 *                             console socket; serve(): reaps       unshare(CGROUP), bounding
 *                             PID 1, "ready" once PID 1's exec     set, seccomp filter,
 *   <-- "ready"               closed its pipe                      capabilities, execve(init)
 *
 * If the driver dies midway, the monitor reads EOF where it waits for a go-ahead and gives up;
 * if the monitor dies, PID 1 reads EOF on its socket (and has a parent-death signal) and ends.
 *
 * Application containers ("app=1", images imported from OCI): PID 1 does not exec the image's
 * program; it becomes berth-init (init.c, no exec: its process title is rewritten so that
 * /proc/1/cmdline shows no host path), which runs the program as its child with the image's
 * user ("user", "groups") and working directory ("workdir"). Their volumes
 * ("volume=<source>:<path>", the source a directory on the container's disk beside the
 * overlay's upper dir) are cloned before pivot_root and attached afterwards, so a symbolic
 * link in the image resolves inside the container, never on the host.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/sched.h>
#include <sched.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "shim.h"

#define CONFIG_FD 3
#define REPORT_FD 4
#define GO_FD 5
#define IDS_PER_CONTAINER 65536
#define MAX_LIST 256
#define MAX_VOLUMES 16

/* the new mount API (not all of it is in Debian 12's glibc headers) */
#define OPEN_TREE_CLONE 1
#define OPEN_TREE_CLOEXEC_ O_CLOEXEC
#define AT_RECURSIVE_ 0x8000
#define MOUNT_ATTR_RDONLY_ 0x1
#define MOUNT_ATTR_IDMAP_ 0x100000
#define MOVE_MOUNT_F_EMPTY_PATH_ 0x4
#define CLOSE_RANGE_CLOEXEC_ 4
#ifndef TIOCGPTPEER
#define TIOCGPTPEER _IO('T', 0x41)
#endif

struct mount_attr_ {
	uint64_t attr_set, attr_clr, propagation, userns_fd;
};

struct config {
	const char *name, *rootfs, *base, *hostname, *exit_file, *socket, *cgroup2, *pid1_script;
	const char *user, *groups, *workdir; /* application containers: berth-init's -u -G -w */
	unsigned long uid;
	unsigned short rows, cols;
	int shell;
	int app;                       /* PID 1 is berth-init, the program its child */
	const char *volumes[MAX_VOLUMES]; /* "<source relative to base>:<path in the container>" */
	int n_volumes;
	uint64_t caps;                 /* capabilities kept in the bounding set */
	struct sock_fprog seccomp;     /* installed right before exec; none if len is 0 */
	const char *argv[MAX_LIST + 1];
	int argc;
	const char *env[MAX_LIST + 1];
	int envc;
	const char *cgroups[MAX_CGROUPS];
	int n_cgroups;
};

/* Host information a container has no business reading: covered as OCI runtimes do. */
static const char *const masked_files[] = {
	"/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug",
	"/proc/latency_stats", NULL,
};
static const char *const masked_dirs[] = {
	"/proc/acpi", "/proc/scsi", "/sys/firmware", "/sys/kernel/security", "/sys/kernel/debug",
	"/sys/kernel/tracing", "/sys/kernel/config", "/sys/fs/pstore", "/sys/fs/bpf", NULL,
};
/* Kernel knobs: read-only even for a process that somehow had the capability to write. */
static const char *const readonly_paths[] = {
	"/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs", NULL,
};
/* No mknod in a user namespace: the host's harmless devices are bound in. */
static const char *const devices[] = { "null", "zero", "full", "random", "urandom", "tty", NULL };

static pid_t child_pid;
static char *title_start;
static size_t title_len;

void set_title_area(char *start, char *end)
{
	title_start = start;
	title_len = (size_t)(end - start);
}

/* /proc/<pid>/cmdline reads this memory: the host paths in our arguments disappear. */
static void set_title(const char *title)
{
	if (!title_start || title_len < 2)
		return;
	memset(title_start, 0, title_len);
	strncpy(title_start, title, title_len - 1);
}

/* ---- monitor side ------------------------------------------------------------------------ */

static void report(const char *fmt, ...)
{
	char line[1200];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (n > (int)sizeof(line) - 2)
		n = sizeof(line) - 2;
	for (int i = 0; i < n; i++)
		if (line[i] == '\n')
			line[i] = ' ';
	line[n++] = '\n';
	if (write(REPORT_FD, line, (size_t)n) != n)
		_exit(1); /* the driver is gone: nobody to start the container for */
}

/* Give up: tell the driver why (a sentence for people), stop PID 1 if it exists. */
static void __attribute__((noreturn, format(printf, 1, 2))) fail(const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (child_pid > 0) { /* gone before the driver hears of it: it may not be in its cgroups */
		kill(child_pid, SIGKILL);
		while (waitpid(child_pid, NULL, 0) < 0 && errno == EINTR)
			;
	}
	report("error %s", msg);
	_exit(1);
}

/* The driver's next go-ahead: its tag ('W' carries a descriptor), or -1 at EOF (it gave up). */
static int recv_go(int *fd)
{
	char c = 0;
	union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } u;
	struct iovec iov = { .iov_base = &c, .iov_len = 1 };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
			      .msg_controllen = sizeof(u.buf) };
	ssize_t n;

	*fd = -1;
	do
		n = recvmsg(GO_FD, &msg, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); n == 1 && cm; cm = CMSG_NXTHDR(&msg, cm))
		if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS &&
		    cm->cmsg_len == CMSG_LEN(sizeof(int)))
			memcpy(fd, CMSG_DATA(cm), sizeof(int));
	return n == 1 ? (unsigned char)c : -1;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

static void parse_seccomp(struct config *cfg, const char *hex)
{
	size_t len = strlen(hex);
	unsigned char *bytes;

	if (len % (2 * sizeof(struct sock_filter)) != 0)
		fail("container setup: malformed seccomp program");
	bytes = malloc(len / 2);
	if (!bytes)
		fail("container setup: out of memory");
	for (size_t i = 0; i < len / 2; i++) {
		int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
		if (hi < 0 || lo < 0)
			fail("container setup: malformed seccomp program");
		bytes[i] = (unsigned char)(hi << 4 | lo);
	}
	cfg->seccomp.len = (unsigned short)(len / 2 / sizeof(struct sock_filter));
	cfg->seccomp.filter = (struct sock_filter *)bytes;
}

/* Read the "key=value\0" entries the driver wrote on CONFIG_FD. */
static void read_config(struct config *cfg)
{
	size_t cap = 65536, len = 0;
	char *buf = malloc(cap);
	ssize_t n;

	if (!buf)
		fail("container setup: out of memory");
	for (;;) {
		if (len == cap) {
			cap *= 2;
			if (!(buf = realloc(buf, cap)))
				fail("container setup: out of memory");
		}
		n = read(CONFIG_FD, buf + len, cap - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			fail("container setup: cannot read the configuration: %s", strerror(errno));
		if (n == 0)
			break;
		len += (size_t)n;
	}
	close(CONFIG_FD);
	memset(cfg, 0, sizeof(*cfg));
	cfg->rows = 24;
	cfg->cols = 80;
	for (size_t off = 0; off < len;) {
		char *entry = buf + off, *value;
		size_t elen = strnlen(entry, len - off);
		if (off + elen == len)
			fail("container setup: truncated configuration");
		off += elen + 1;
		value = strchr(entry, '=');
		if (!value)
			fail("container setup: malformed configuration entry");
		*value++ = 0;
		if (!strcmp(entry, "name")) cfg->name = value;
		else if (!strcmp(entry, "rootfs")) cfg->rootfs = value;
		else if (!strcmp(entry, "base")) cfg->base = value;
		else if (!strcmp(entry, "hostname")) cfg->hostname = value;
		else if (!strcmp(entry, "exit")) cfg->exit_file = value;
		else if (!strcmp(entry, "socket")) cfg->socket = value;
		else if (!strcmp(entry, "cgroup2")) cfg->cgroup2 = value;
		else if (!strcmp(entry, "pid1_script")) cfg->pid1_script = value;
		else if (!strcmp(entry, "uid")) cfg->uid = strtoul(value, NULL, 10);
		else if (!strcmp(entry, "rows")) cfg->rows = (unsigned short)atoi(value);
		else if (!strcmp(entry, "cols")) cfg->cols = (unsigned short)atoi(value);
		else if (!strcmp(entry, "shell")) cfg->shell = atoi(value);
		else if (!strcmp(entry, "app")) cfg->app = atoi(value);
		else if (!strcmp(entry, "user")) cfg->user = value;
		else if (!strcmp(entry, "groups")) cfg->groups = value;
		else if (!strcmp(entry, "workdir")) cfg->workdir = value;
		else if (!strcmp(entry, "volume") && cfg->n_volumes < MAX_VOLUMES &&
			 strchr(value, ':'))
			cfg->volumes[cfg->n_volumes++] = value;
		else if (!strcmp(entry, "caps")) cfg->caps = strtoull(value, NULL, 10);
		else if (!strcmp(entry, "seccomp")) parse_seccomp(cfg, value);
		else if (!strcmp(entry, "arg") && cfg->argc < MAX_LIST) cfg->argv[cfg->argc++] = value;
		else if (!strcmp(entry, "env") && cfg->envc < MAX_LIST) cfg->env[cfg->envc++] = value;
		else if (!strcmp(entry, "cgroup") && cfg->n_cgroups < MAX_CGROUPS)
			cfg->cgroups[cfg->n_cgroups++] = value;
		else
			fail("container setup: unknown configuration entry %s", entry);
	}
	if (!cfg->name || !cfg->rootfs || !cfg->base || !cfg->hostname || !cfg->exit_file ||
	    !cfg->socket || !cfg->uid || cfg->argc == 0)
		fail("container setup: incomplete configuration");
}

/* One message on the monitor <-> PID 1 socket (SOCK_SEQPACKET): a tag, text, up to 2 fds. */
static int send_msg(int sock, char tag, const char *text, const int *fds, int nfds)
{
	char data[1024];
	union { char buf[CMSG_SPACE(2 * sizeof(int))]; struct cmsghdr align; } u;
	struct iovec iov = { .iov_base = data };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };

	data[0] = tag;
	iov.iov_len = 1 + (size_t)snprintf(data + 1, sizeof(data) - 1, "%s", text ? text : "");
	if (iov.iov_len > sizeof(data))
		iov.iov_len = sizeof(data);
	if (nfds > 0) {
		memset(&u, 0, sizeof(u));
		msg.msg_control = u.buf;
		msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
		struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
		memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
	}
	return sendmsg(sock, &msg, MSG_NOSIGNAL) < 0 ? -1 : 0;
}

/* Returns the tag (text in `text`, fds in `fds`), or -1 at EOF/error. */
static int recv_msg(int sock, char *text, size_t text_size, int *fds, int max_fds)
{
	char data[1024];
	union { char buf[CMSG_SPACE(2 * sizeof(int))]; struct cmsghdr align; } u;
	struct iovec iov = { .iov_base = data, .iov_len = sizeof(data) - 1 };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
			      .msg_controllen = sizeof(u.buf) };
	ssize_t n;

	do
		n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n <= 0)
		return -1;
	data[n] = 0;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
			int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
			if (count > max_fds)
				count = max_fds;
			memcpy(fds, CMSG_DATA(c), count * sizeof(int));
		}
	}
	if (text)
		snprintf(text, text_size, "%s", data + 1);
	return (unsigned char)data[0];
}

static void write_map(pid_t pid, const char *file, unsigned long uid)
{
	char path[64], line[64];
	int fd, n;

	snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, file);
	n = snprintf(line, sizeof(line), "0 %lu %d\n", uid, IDS_PER_CONTAINER);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, line, (size_t)n) != n)
		fail("container setup: cannot write %s: %s", path, strerror(errno));
	close(fd);
}

/* A detached, read-only clone of the image tree whose ids are shifted by PID 1's user
 * namespace: host root's files appear as the container root's. One shared tree serves every
 * container, and it never appears in the host's mount table. */
static int idmapped_image(const struct config *cfg, pid_t pid)
{
	char path[64];
	struct mount_attr_ attr = { .attr_set = MOUNT_ATTR_IDMAP_ | MOUNT_ATTR_RDONLY_ };
	int userns, tree;

	snprintf(path, sizeof(path), "/proc/%d/ns/user", (int)pid);
	userns = open(path, O_RDONLY | O_CLOEXEC);
	if (userns < 0)
		fail("container setup: cannot open %s: %s", path, strerror(errno));
	tree = (int)syscall(SYS_open_tree, AT_FDCWD, cfg->rootfs,
			    OPEN_TREE_CLONE | O_CLOEXEC | AT_RECURSIVE_);
	if (tree < 0)
		fail("container setup: cannot clone the image tree %s: %s", cfg->rootfs,
		     strerror(errno));
	attr.userns_fd = (uint64_t)userns;
	if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH | AT_RECURSIVE_, &attr,
		    sizeof(attr)) != 0)
		fail("container setup: cannot make an idmapped mount of %s: %s", cfg->rootfs,
		     strerror(errno));
	close(userns);
	return tree;
}

/* PID 1's way into its cgroup-v1 cgroups: their "tasks" files, opened here as host root
 * (cgroup v1 checks the opener's credentials, so PID 1 may use them after its ids changed).
 * PID 1 writes "0" to each as its first act (join_cgroups below). A process moving only
 * itself, one thread, skips the kernel's cgroup_threadgroup_rwsem; writing a pid to
 * cgroup.procs takes it for writing, and the first writer after a quiet moment waits for an
 * RCU grace period (7-13 ms on these machines, for LXC as well). On cgroup2 (and the hybrid
 * "unified" hierarchy) PID 1 is born in its cgroup instead (CLONE_INTO_CGROUP). */
static int open_cgroup_tasks(const struct config *cfg, int *fds)
{
	char path[4200];
	int n = 0;

	for (int i = 0; i < cfg->n_cgroups; i++) {
		if (cfg->cgroup2 && !strcmp(cfg->cgroups[i], cfg->cgroup2))
			continue;
		snprintf(path, sizeof(path), "%s/tasks", cfg->cgroups[i]);
		fds[n] = open(path, O_WRONLY | O_CLOEXEC);
		if (fds[n] < 0)
			fail("container setup: cannot open cgroup %s: %s", cfg->cgroups[i],
			     strerror(errno));
		n++;
	}
	return n;
}

static void close_all(const int *fds, int n)
{
	for (int i = 0; i < n; i++)
		close(fds[i]);
}

static int listen_console(const char *path)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	int fd;
	mode_t old;

	if (strlen(path) >= sizeof(addr.sun_path))
		fail("container setup: console socket path too long");
	unlink(path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		fail("container setup: socket: %s", strerror(errno));
	strcpy(addr.sun_path, path);
	old = umask(0177); /* the socket is born 0600: only root may attach */
	if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0)
		fail("container setup: cannot listen on %s: %s", path, strerror(errno));
	umask(old);
	if (listen(fd, 64) != 0) /* a burst of viewers waits in the backlog */
		fail("container setup: listen: %s", strerror(errno));
	return fd;
}

static void __attribute__((noreturn)) pid1_main(const struct config *cfg, int sock, int exec_w,
						 const int *tasks, int n_tasks);

int launch_main(int argc, char **argv)
{
	static struct config cfg;
	struct clone_args args = { 0 };
	int sp[2], exec_pipe[2], cgroup_fd = -1, mounts[2], fds[2] = { -1, -1 }, fd, net_ready = 0;
	int tasks[MAX_CGROUPS], n_tasks;
	char text[1024];
	pid_t pid;

	(void)argc;
	(void)argv; /* "-S <socket> -n <name>" are only there for ps and the driver's scans */
	read_config(&cfg);
	pid = fork(); /* the driver reaps our parent at once: the container is nobody's child */
	if (pid < 0)
		fail("container setup: fork: %s", strerror(errno));
	if (pid > 0)
		_exit(0);
	setsid();
	signal(SIGHUP, SIG_IGN);
	signal(SIGINT, SIG_IGN);
	signal(SIGPIPE, SIG_IGN);
	report("monitor %d", (int)getpid());

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) != 0 ||
	    pipe2(exec_pipe, O_CLOEXEC) != 0)
		fail("container setup: %s", strerror(errno));
	args.flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET |
		     CLONE_NEWPID;
	args.exit_signal = SIGCHLD;
	if (cfg.cgroup2) { /* born in its cgroup: no migration (and its RCU grace period) */
		cgroup_fd = open(cfg.cgroup2, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (cgroup_fd < 0)
			fail("container setup: cannot open cgroup %s: %s", cfg.cgroup2, strerror(errno));
		args.flags |= CLONE_INTO_CGROUP;
		args.cgroup = (uint64_t)cgroup_fd;
	}
	n_tasks = open_cgroup_tasks(&cfg, tasks);
	pid = (pid_t)syscall(SYS_clone3, &args, sizeof(args));
	if (pid < 0)
		fail("container setup: cannot create the container's namespaces: %s", strerror(errno));
	if (pid == 0) {
		close(sp[0]);
		close(exec_pipe[0]);
		pid1_main(&cfg, sp[1], exec_pipe[1], tasks, n_tasks);
	}
	close_all(tasks, n_tasks);
	child_pid = pid;
	close(sp[1]);
	close(exec_pipe[1]);
	if (cgroup_fd >= 0)
		close(cgroup_fd);
	report("pid1 %d", (int)pid);

	/* The gid map may be written without denying setgroups: we are privileged outside. */
	write_map(pid, "uid_map", cfg.uid);
	write_map(pid, "gid_map", cfg.uid);
	mounts[0] = idmapped_image(&cfg, pid);
	/* the disk ('W', never in the host's mount table: PID 1 attaches it in its own) and the
	 * network ('N') are ready in whichever order: the driver sends each as soon as it is */
	for (mounts[1] = -1; mounts[1] < 0;) {
		int tag = recv_go(&fd);
		if (tag == 'W' && fd >= 0)
			mounts[1] = fd;
		else if (tag == 'N' && fd < 0)
			net_ready = 1;
		else
			fail("the driver gave up starting the container");
	}
	if (send_msg(sp[0], 'M', NULL, mounts, 2) != 0)
		fail("container setup: PID 1 died before its root was built");
	close(mounts[0]);
	close(mounts[1]);
	while (!net_ready) {
		if (recv_go(&fd) != 'N' || fd >= 0)
			fail("the driver gave up starting the container");
		net_ready = 1;
	}
	/* queued for PID 1, which reads it once its root is built: it then execs at once */
	if (send_msg(sp[0], 'X', NULL, NULL, 0) != 0)
		fail("container setup: PID 1 died before its root was built");

	switch (recv_msg(sp[0], text, sizeof(text), fds, 2)) {
	case 'R':
		break;
	case 'E':
		fail("%s", text);
	default:
		fail("container setup: PID 1 died while building the container's root");
	}
	if (fds[0] < 0 || fds[1] < 0)
		fail("container setup: PID 1 sent no console");
	report("root");

	struct serve_args serve_args = {
		.master_fd = fds[0], .slave_fd = fds[1], .pid1 = pid, .exit_file = cfg.exit_file,
		.socket_path = cfg.socket, .ready_fd = REPORT_FD, .exec_fd = exec_pipe[0],
	};
	serve_args.listen_fd = listen_console(cfg.socket);
	for (int i = 0; i < cfg.n_cgroups; i++)
		serve_args.cgroup_dirs[serve_args.n_cgroups++] = cfg.cgroups[i];
	close(sp[0]);
	close(GO_FD);
	prctl(PR_SET_NAME, "berth-shim");
	return serve(&serve_args);
}

/* ---- PID 1 side -------------------------------------------------------------------------- */

static int pid1_sock = -1;

static void __attribute__((noreturn, format(printf, 1, 2))) pid1_fail(const char *fmt, ...)
{
	char msg[1000];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	send_msg(pid1_sock, 'E', msg, NULL, 0);
	_exit(127);
}

#define CHECK(expr, ...) do { if ((expr) != 0) pid1_fail(__VA_ARGS__); } while (0)
#define SETUP "container setup (PID 1): "

static void do_mount(const char *source, const char *target, const char *fstype,
		     unsigned long flags, const char *data)
{
	if (mount(source, target, fstype, flags, data) != 0)
		pid1_fail(SETUP "mount %s on %s: %s", fstype ? fstype : (source ? source : ""),
			  target, strerror(errno));
}

static void write_text(const char *path, const char *text, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
	size_t len = strlen(text);

	if (fd < 0 || write(fd, text, len) != (ssize_t)len || close(fd) != 0)
		pid1_fail(SETUP "cannot write %s: %s", path, strerror(errno));
}

static void touch(const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);

	if (fd < 0)
		pid1_fail(SETUP "cannot create %s: %s", path, strerror(errno));
	close(fd);
}

static int exists(const char *path)
{
	struct stat st;

	return lstat(path, &st) == 0;
}

static int is_dir(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Mount everything the container sees and pivot into it. Afterwards '/' is the overlay. */
static void build_root(const struct config *cfg, int tree, int disk)
{
	char root[4096], path[4200];
	const unsigned long nosuid_dev_exec = MS_NOSUID | MS_NODEV | MS_NOEXEC;
	int volume_fds[MAX_VOLUMES];

	do_mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL); /* nothing propagates either way */
	CHECK(sethostname(cfg->hostname, strlen(cfg->hostname)), SETUP "sethostname: %s",
	      strerror(errno));
	CHECK(chdir(cfg->base), SETUP "chdir %s: %s", cfg->base, strerror(errno));
	CHECK((int)syscall(SYS_move_mount, tree, "", AT_FDCWD, "lower", MOVE_MOUNT_F_EMPTY_PATH_),
	      SETUP "cannot attach the image: %s", strerror(errno));
	close(tree);
	CHECK((int)syscall(SYS_move_mount, disk, "", AT_FDCWD, "rw", MOVE_MOUNT_F_EMPTY_PATH_),
	      SETUP "cannot attach the disk: %s", strerror(errno));
	close(disk);
	/* relative option paths: the container's /proc/mounts shows no host path */
	do_mount("overlay", "merged", "overlay", 0,
		 "lowerdir=lower,upperdir=rw/upper,workdir=rw/work,userxattr");
	snprintf(root, sizeof(root), "%s/merged", cfg->base);
	/* detached clones of the volumes' directories, attached once inside (below) */
	for (int i = 0; i < cfg->n_volumes; i++) {
		char source[4096];
		snprintf(source, sizeof(source), "%.*s", (int)(strchr(cfg->volumes[i], ':') -
							       cfg->volumes[i]), cfg->volumes[i]);
		volume_fds[i] = (int)syscall(SYS_open_tree, AT_FDCWD, source,
					     OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC_);
		if (volume_fds[i] < 0)
			pid1_fail(SETUP "cannot prepare the volume %s: %s", source, strerror(errno));
	}

	snprintf(path, sizeof(path), "%s/etc", root);
	if (is_dir(path)) { /* Debian's init scripts read it */
		char line[300];
		snprintf(path, sizeof(path), "%s/etc/hostname", root);
		snprintf(line, sizeof(line), "%s\n", cfg->hostname);
		write_text(path, line, 0644);
	}
	for (const char *const *d = (const char *const[]){ "proc", "sys", "dev", "run", NULL }; *d; d++) {
		snprintf(path, sizeof(path), "%s/%s", root, *d);
		if (mkdir(path, 0755) != 0 && errno != EEXIST)
			pid1_fail(SETUP "mkdir %s: %s", path, strerror(errno));
	}
	/* /proc needs the new PID namespace and must be mounted while the host's /proc is still
	 * visible (the kernel refuses a proc mount that would reveal more than an existing one) */
	snprintf(path, sizeof(path), "%s/proc", root);
	do_mount("proc", path, "proc", nosuid_dev_exec, NULL);
	snprintf(path, sizeof(path), "%s/sys", root);
	do_mount("sysfs", path, "sysfs", nosuid_dev_exec | MS_RDONLY, NULL);
	for (const char *const *f = masked_files; *f; f++) {
		snprintf(path, sizeof(path), "%s%s", root, *f);
		if (exists(path))
			do_mount("/dev/null", path, NULL, MS_BIND, NULL);
	}
	for (const char *const *d = masked_dirs; *d; d++) {
		snprintf(path, sizeof(path), "%s%s", root, *d);
		if (is_dir(path))
			do_mount("tmpfs", path, "tmpfs", nosuid_dev_exec | MS_RDONLY, "size=0");
	}
	for (const char *const *p = readonly_paths; *p; p++) {
		snprintf(path, sizeof(path), "%s%s", root, *p);
		if (!exists(path))
			continue;
		do_mount(path, path, NULL, MS_BIND | MS_REC, NULL);
		do_mount(NULL, path, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | nosuid_dev_exec, NULL);
	}
	snprintf(path, sizeof(path), "%s/dev", root);
	do_mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=1024k");
	for (const char *const *d = devices; *d; d++) {
		char host[64];
		snprintf(path, sizeof(path), "%s/dev/%s", root, *d);
		snprintf(host, sizeof(host), "/dev/%s", *d);
		touch(path);
		do_mount(host, path, NULL, MS_BIND, NULL);
	}
	snprintf(path, sizeof(path), "%s/dev/console", root);
	touch(path);
	for (const char *const *d = (const char *const[]){ "pts", "shm", "mqueue", NULL }; *d; d++) {
		snprintf(path, sizeof(path), "%s/dev/%s", root, *d);
		CHECK(mkdir(path, 0755), SETUP "mkdir %s: %s", path, strerror(errno));
	}
	snprintf(path, sizeof(path), "%s/dev/pts", root);
	do_mount("devpts", path, "devpts", MS_NOSUID | MS_NOEXEC,
		 "newinstance,ptmxmode=0666,mode=620,gid=5");
	snprintf(path, sizeof(path), "%s/dev/shm", root);
	do_mount("shm", path, "tmpfs", nosuid_dev_exec, "mode=1777,size=65536k");
	snprintf(path, sizeof(path), "%s/dev/mqueue", root);
	do_mount("mqueue", path, "mqueue", nosuid_dev_exec, NULL);
	static const char *const links[][2] = {
		{ "pts/ptmx", "ptmx" }, { "/proc/self/fd", "fd" }, { "/proc/self/fd/0", "stdin" },
		{ "/proc/self/fd/1", "stdout" }, { "/proc/self/fd/2", "stderr" },
	};
	for (size_t i = 0; i < sizeof(links) / sizeof(links[0]); i++) {
		snprintf(path, sizeof(path), "%s/dev/%s", root, links[i][1]);
		CHECK(symlink(links[i][0], path), SETUP "symlink %s: %s", path, strerror(errno));
	}
	snprintf(path, sizeof(path), "%s/run", root);
	do_mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=65536k");
	if (cfg->pid1_script) {
		snprintf(path, sizeof(path), "%s/run/berth", root);
		CHECK(mkdir(path, 0755), SETUP "mkdir %s: %s", path, strerror(errno));
		snprintf(path, sizeof(path), "%s/run/berth/pid1.sh", root);
		write_text(path, cfg->pid1_script, 0644);
	}
	CHECK(chdir(root), SETUP "chdir %s: %s", root, strerror(errno));
	/* the old root ends up stacked under '.': detach it */
	CHECK((int)syscall(SYS_pivot_root, ".", "."), SETUP "pivot_root: %s", strerror(errno));
	CHECK(umount2(".", MNT_DETACH), SETUP "detaching the host's tree: %s", strerror(errno));
	CHECK(chdir("/"), SETUP "chdir /: %s", strerror(errno));
	for (int i = 0; i < cfg->n_volumes; i++) {
		const char *target = strchr(cfg->volumes[i], ':') + 1;
		make_dirs(target); /* in the container's root: its links resolve there */
		CHECK((int)syscall(SYS_move_mount, volume_fds[i], "", AT_FDCWD, target,
				   MOVE_MOUNT_F_EMPTY_PATH_),
		      SETUP "cannot mount the volume %s: %s", target, strerror(errno));
		close(volume_fds[i]);
	}
}

/* A pty from the container's own devpts (it sees its console as /dev/pts/0 and cannot reach
 * the host's ptys); /dev/console is its slave. */
static void open_console(const struct config *cfg, int *master, int *slave)
{
	struct winsize ws = { .ws_row = cfg->rows, .ws_col = cfg->cols };
	char fdpath[64], name[256];
	int unlock = 0;
	ssize_t n;

	*master = open("/dev/pts/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (*master < 0 || ioctl(*master, TIOCSPTLCK, &unlock) != 0)
		pid1_fail(SETUP "cannot open a pty: %s", strerror(errno));
	*slave = ioctl(*master, TIOCGPTPEER, O_RDWR | O_NOCTTY);
	if (*slave < 0)
		pid1_fail(SETUP "cannot open the pty's slave: %s", strerror(errno));
	/* sized before the init starts, else the shell's first SIGWINCH redraws its prompt */
	ioctl(*master, TIOCSWINSZ, &ws);
	snprintf(fdpath, sizeof(fdpath), "/proc/self/fd/%d", *slave);
	n = readlink(fdpath, name, sizeof(name) - 1);
	if (n <= 0)
		pid1_fail(SETUP "cannot name the console pty: %s", strerror(errno));
	name[n] = 0;
	do_mount(name, "/dev/console", NULL, MS_BIND, NULL);
}

/* The bounding set keeps only `keep`: an exec'd root gets exactly those. */
static int drop_bounding(uint64_t keep)
{
	for (int cap = 0; cap < 64; cap++)
		if (!(keep & (1ull << cap)) && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 &&
		    errno != EINVAL) /* EINVAL: beyond the kernel's last capability */
			return -1;
	return 0;
}

/* This process's own sets shrink to `keep` too; nothing ambient or inheritable is left. */
static int drop_capabilities(uint64_t keep)
{
	struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct data[2] = { { 0 } };

	prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
	data[0].effective = data[0].permitted = (uint32_t)keep;
	data[1].effective = data[1].permitted = (uint32_t)(keep >> 32);
	return (int)syscall(SYS_capset, &hdr, data);
}

/* What berth-init (init.c) needs: the program, its user and groups, its working dir. */
static void init_config(const struct config *cfg, int exec_w, struct init_config *ic)
{
	unsigned uid = 0, gid = 0;

	memset(ic, 0, sizeof(*ic));
	ic->argv = (char *const *)cfg->argv;
	if (cfg->user && sscanf(cfg->user, "%u:%u", &uid, &gid) != 2)
		pid1_fail(SETUP "bad user %s", cfg->user);
	ic->uid = uid;
	ic->gid = gid;
	for (const char *p = cfg->groups ? cfg->groups : ""; *p && ic->n_groups < MAX_GROUPS;) {
		char *end;
		ic->groups[ic->n_groups++] = (gid_t)strtoul(p, &end, 10);
		if (end == p || (*end && *end != ','))
			pid1_fail(SETUP "bad groups %s", cfg->groups);
		p = *end ? end + 1 : end;
	}
	ic->workdir = cfg->workdir;
	ic->status_fd = exec_w;
}

/* see open_cgroup_tasks: "0" is this thread, which is all of PID 1 */
static void join_cgroups(const int *tasks, int n_tasks)
{
	for (int i = 0; i < n_tasks; i++)
		if (write(tasks[i], "0", 1) != 1)
			pid1_fail(SETUP "cannot join its cgroups: %s", strerror(errno));
	close_all(tasks, n_tasks);
}

static void __attribute__((noreturn)) pid1_main(const struct config *cfg, int sock, int exec_w,
						 const int *tasks, int n_tasks)
{
	int master, slave, fds[2] = { -1, -1 };
	struct init_config ic;
	sigset_t none;

	pid1_sock = sock;
	join_cgroups(tasks, n_tasks); /* first: everything PID 1 does is accounted there */
	prctl(PR_SET_PDEATHSIG, SIGKILL); /* the monitor died: give up (cleared before exec) */
	close(CONFIG_FD);
	close(REPORT_FD);
	close(GO_FD);
	/* our ids exist once the monitor has written the maps: it then sends the image */
	if (recv_msg(sock, NULL, 0, fds, 2) != 'M' || fds[0] < 0 || fds[1] < 0)
		_exit(1);
	CHECK(setresgid(0, 0, 0), SETUP "setresgid: %s", strerror(errno));
	CHECK(setgroups(0, NULL), SETUP "setgroups: %s", strerror(errno));
	CHECK(setresuid(0, 0, 0), SETUP "setresuid: %s", strerror(errno));
	build_root(cfg, fds[0], fds[1]);
	open_console(cfg, &master, &slave);
	int pty[2] = { master, slave };
	if (send_msg(sock, 'R', NULL, pty, 2) != 0)
		_exit(1);
	close(master);
	if (recv_msg(sock, NULL, 0, NULL, 0) != 'X')
		_exit(1);
	if (cfg->app)
		init_config(cfg, exec_w, &ic);
	/* we are in our cgroups (join_cgroups): the cgroup namespace is rooted there */
	if (unshare(CLONE_NEWCGROUP) != 0)
		goto exec_failed_setup;

	for (int fd = 0; fd < 3; fd++)
		dup2(slave, fd);
	if (slave > 2)
		close(slave);
	/* A console shell needs the console as its controlling terminal (job control, ^C,
	 * SIGWINCH). A real init must not get one: our /dev/console is a pty, and sysvinit
	 * would own it so that the getty it starts could not give it to the login. */
	if (cfg->shell && (setsid() < 0 || ioctl(0, TIOCSCTTY, 0) != 0))
		goto exec_failed_setup;
	/* nothing inherited from the worker (ignored signals, a blocked mask) reaches the init */
	for (int sig = 1; sig < NSIG; sig++)
		if (sig != SIGKILL && sig != SIGSTOP)
			signal(sig, SIG_DFL);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	prctl(PR_SET_PDEATHSIG, 0);
	syscall(SYS_close_range, 3, ~0u, CLOSE_RANGE_CLOEXEC_);

	/* Order matters: the bounding set needs CAP_SETPCAP, the filter CAP_SYS_ADMIN (in our
	 * user namespace; no_new_privs would break setuid programs like su), then the rest go. */
	if (drop_bounding(cfg->caps) != 0)
		goto exec_failed_setup;
	if (cfg->seccomp.len &&
	    syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &cfg->seccomp) != 0)
		goto exec_failed_setup;
	if (drop_capabilities(cfg->caps) != 0)
		goto exec_failed_setup;
	if (cfg->app) {
		/* no exec: only the exec status pipe and the console stay open */
		for (int fd = 3; fd < exec_w; fd++)
			close(fd);
		syscall(SYS_close_range, exec_w + 1, ~0u, 0);
		environ = (char **)cfg->env; /* the program's, for its PATH lookup and exec */
		set_title("berth-init");
		_exit(run_init(&ic));
	}
	execve(cfg->argv[0], (char *const *)cfg->argv, (char *const *)cfg->env);
	dprintf(exec_w, "E cannot run %s in the container: %s", cfg->argv[0], strerror(errno));
	_exit(127);
exec_failed_setup:
	dprintf(exec_w, "E " SETUP "%s", strerror(errno));
	_exit(127);
}
