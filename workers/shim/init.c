/*
 * berth-init: PID 1 of an application container (an image imported from OCI).
 *
 * An application is not written to be an init: the kernel drops the signals a namespace's
 * init has no handler for (so a stop could only kill it), and nobody reaps the orphans it
 * leaves. So PID 1 is this small init (the role tini or catatonit play for Docker) and the
 * application runs as its child, usually PID 2:
 *
 *  - it starts the workload: a new session with the console as its controlling terminal
 *    (^C in the browser's console interrupts it), the image's working directory (created if
 *    missing, as Docker does), user, groups and PATH lookup, the environment it was given;
 *  - it forwards every signal it receives to the workload (SIGTERM from a stop, or the
 *    image's STOPSIGNAL, SIGWINCH from a resize, ...);
 *  - it reaps every orphan that the kernel re-parents to it;
 *  - when the workload ends, it says so on the console and exits with its status (128 + the
 *    signal's number if a signal ended it); the kernel then ends the container's other
 *    processes.
 *
 * It is not exec'd: PID 1 (launch.c) calls run_init() once its root, console, capabilities
 * and seccomp filter are in place. An image has no dynamic loader to give an exec'd copy of
 * this binary (a static Go program is often alone in its image), and a container must see
 * nothing of the host by path. Its process title is "berth-init".
 *
 * The exec status pipe of the shim: the workload writes "E <why>" on it if it cannot be
 * started, and its exec closes it otherwise, so the driver's start fails with the reason (a
 * missing program, a bad working directory) instead of succeeding and stopping at once.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shim.h"

#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

extern char **environ;

static int status_fd = -1;

void make_dirs(const char *dir)
{
	char path[PATH_MAX];

	if (snprintf(path, sizeof(path), "%s", dir) >= (int)sizeof(path))
		return;
	for (char *p = path + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		mkdir(path, 0755);
		*p = '/';
	}
	mkdir(path, 0755);
}

static void __attribute__((noreturn, format(printf, 1, 2))) fail_start(const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (status_fd >= 0)
		dprintf(status_fd, "E %s", msg);
	dprintf(2, "berth-init: %s\r\n", msg);
	_exit(127);
}

/* execvp with the PATH of the environment the workload gets (not ours, which is the same
 * here, but execvp would also fall back to a default of its own). */
static void exec_workload(char *const *argv)
{
	const char *path = getenv("PATH");
	char candidate[PATH_MAX];
	int saved = ENOENT;

	if (strchr(argv[0], '/')) {
		execve(argv[0], argv, environ);
		fail_start("cannot run %s in the container: %s", argv[0], strerror(errno));
	}
	if (!path || !*path)
		path = DEFAULT_PATH;
	for (const char *dir = path; dir;) {
		const char *end = strchr(dir, ':');
		size_t len = end ? (size_t)(end - dir) : strlen(dir);
		if (snprintf(candidate, sizeof(candidate), "%.*s/%s", (int)len, len ? dir : ".",
			     argv[0]) < (int)sizeof(candidate)) {
			execve(candidate, argv, environ);
			if (errno != ENOENT && errno != ENOTDIR)
				saved = errno; /* e.g. EACCES: worth reporting over "not found" */
		}
		dir = end ? end + 1 : NULL;
	}
	fail_start("cannot run %s in the container: %s", argv[0],
		   saved == ENOENT ? "not found in PATH" : strerror(saved));
}

static void __attribute__((noreturn)) workload(char *const *argv, uid_t uid, gid_t gid,
					       const gid_t *groups, int n_groups, const char *dir,
					       const sigset_t *mask)
{
	sigprocmask(SIG_SETMASK, mask, NULL);
	/* its own session, the console as controlling terminal: job control and ^C work */
	if (setsid() >= 0)
		ioctl(0, TIOCSCTTY, 0);
	if (dir) {
		make_dirs(dir); /* Docker creates a missing WORKDIR too (as root, before setuid) */
		if (chdir(dir) != 0)
			fail_start("cannot enter the working directory %s: %s", dir, strerror(errno));
	}
	if (setgroups((size_t)n_groups, groups) != 0 || setgid(gid) != 0 || setuid(uid) != 0)
		fail_start("cannot become user %u:%u: %s", (unsigned)uid, (unsigned)gid,
			   strerror(errno));
	exec_workload(argv);
	_exit(127);
}

static void describe_end(int status)
{
	if (WIFEXITED(status))
		dprintf(2, "\r\n[berth-init] the application exited with status %d\r\n",
			WEXITSTATUS(status));
	else if (WIFSIGNALED(status))
		dprintf(2, "\r\n[berth-init] the application was ended by signal %d (%s)\r\n",
			WTERMSIG(status), strsignal(WTERMSIG(status)));
}

int run_init(const struct init_config *c)
{
	sigset_t all, original;
	pid_t child;
	int status;

	prctl(PR_SET_NAME, "berth-init");
	status_fd = c->status_fd;
	if (!c->argv[0])
		fail_start("the image has no command to run (no Entrypoint or Cmd)");
	/* Every signal waits in the queue for sigwaitinfo below: a blocked signal is never
	 * dropped, not even for a namespace's init. */
	sigfillset(&all);
	sigprocmask(SIG_SETMASK, &all, &original);
	child = fork();
	if (child < 0)
		fail_start("cannot start the application: %s", strerror(errno));
	if (child == 0)
		workload(c->argv, c->uid, c->gid, c->groups, c->n_groups, c->workdir, &original);
	close(status_fd);
	status_fd = -1;

	for (;;) {
		siginfo_t info;
		int sig = sigwaitinfo(&all, &info);
		if (sig < 0)
			continue;
		if (sig != SIGCHLD) {
			kill(child, sig);
			continue;
		}
		for (pid_t pid; (pid = waitpid(-1, &status, WNOHANG)) > 0;) {
			if (pid != child)
				continue; /* an orphan: reaped, nothing more */
			describe_end(status);
			if (WIFSIGNALED(status))
				return 128 + WTERMSIG(status);
			return WEXITSTATUS(status);
		}
	}
}
