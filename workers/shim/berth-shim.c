/*
 * berth-shim: starts a container and then stays with it as its monitor and console server
 * (like conmon or LXC's monitor, in a few hundred KiB of RSS).
 *
 * `berth-shim launch` (launch.c) runs the namespace sequence: it clones the container's PID 1
 * into new namespaces, sets its user namespace up, and PID 1 builds the container's root and
 * console before it execs the image's init. The same process then serves the console (this
 * file) with PID 1 as its child:
 *
 *  - Container output is read continuously into a 256 KiB ring ("scrollback"), so the
 *    container never blocks on a full pty when nobody is attached. Bytes are numbered from 0
 *    at container start; a client (re)attaches from any offset still in the ring.
 *  - Any number of clients at once on the socket. Frames: u8 type, u32 length (big-endian),
 *    payload. Client->shim: 'h' hello (u64 from_offset), 'i' input bytes, 'r' resize (u16
 *    rows, u16 cols). Shim->client: 'o' output (u64 offset + data), 'g' gap (u64 first
 *    offset still retained), 'x' exit (i32 wait status of PID 1).
 *  - A slow client never blocks anyone: each client only has a cursor into the ring. When
 *    output it has not received yet is overwritten, it is sent a 'g' frame and continues from
 *    the oldest retained byte. Its output queue is therefore bounded by the ring itself.
 *  - Holding a slave fd keeps the pty from hanging up while no container process has it open
 *    (e.g. between two getty runs), so reading the master never spins on POLLHUP. login(1)'s
 *    vhangup() hangs that fd up too: then the shim takes a fresh one (TIOCGPTPEER).
 *  - It reaps PID 1. When PID 1 exits it writes the wait status to the exit file, drains the
 *    pty, sends 'x' to every client and exits (after at most DRAIN_MS if a client does not
 *    read). On the way out it removes the console socket and the container's (now empty)
 *    cgroups; the host agent has the driver tidy the rest (firewall rules, runtime files).
 *
 * Build: cc -O2 -Wall -Wextra -o var/bin/berth-shim workers/shim/berth-shim.c
 *        workers/shim/launch.c workers/shim/init.c
 * (launch.c starts the container; init.c is berth-init, which PID 1 of an application
 * container runs)
 * The ready fd gets "ready\n" once the shim serves the console, or "error <message>\n" if
 * PID 1 could not exec its init: the exec status fd is a pipe whose write end PID 1 held
 * close-on-exec, so EOF without data means the exec succeeded, and "E <message>" is its error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "shim.h"

#define RING_SIZE (256u * 1024u)
#define MAX_CLIENTS 64
#define MAX_IN_PAYLOAD 16384u   /* largest frame a client may send */
#define OUT_CHUNK 16384u        /* largest output payload we send in one frame */
#define INPUT_QUEUE 65536u      /* pending keyboard input for the pty */
#define DRAIN_MS 2000           /* how long clients get to receive the final frames */
#define QUIET_MS 10             /* after PID 1 exits, read the pty until it is this long quiet */
#define LAST_WORDS_MS 500       /* ... but no longer than this */
#define HDR 5
#ifndef TIOCGPTPEER
#define TIOCGPTPEER _IO('T', 0x41)
#endif

struct client {
	int fd;
	int hello;              /* output flows only after the client said where to start */
	int exit_sent;
	uint64_t cursor;        /* offset of the next output byte to send */
	size_t in_len;
	size_t out_len, out_pos;
	unsigned char in[HDR + MAX_IN_PAYLOAD];
	unsigned char out[HDR + 8 + OUT_CHUNK];
};

static unsigned char ring[RING_SIZE];
static uint64_t total;          /* bytes of output read from the pty so far */
static unsigned char inq[INPUT_QUEUE];
static size_t inq_len;
static struct client *clients[MAX_CLIENTS];
static int master_fd = -1, listen_fd = -1, slave_fd = -1;
static int master_eof;          /* the pty hung up for good: stop polling it */
static int hangups;             /* slave reopened without any output since */
static pid_t pid1;
static int pid1_exited, pid1_status;
static int drained;             /* PID 1 exited and its last output has been read */
static const char *exit_file;
static const char *socket_path;
static const char *cgroup_dirs[MAX_CGROUPS];
static int n_cgroups;

static void logmsg(const char *fmt, const char *arg)
{
	fprintf(stderr, "berth-shim[%d]: ", (int)getpid());
	fprintf(stderr, fmt, arg);
	fputc('\n', stderr);
}

static void put_u32(unsigned char *p, uint32_t v)
{
	p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}

static void put_u64(unsigned char *p, uint64_t v)
{
	put_u32(p, (uint32_t)(v >> 32));
	put_u32(p + 4, (uint32_t)v);
}

static uint32_t get_u32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t get_u64(const unsigned char *p)
{
	return (uint64_t)get_u32(p) << 32 | get_u32(p + 4);
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t ring_start(void)
{
	return total > RING_SIZE ? total - RING_SIZE : 0;
}

static void drop_client(int i)
{
	close(clients[i]->fd);
	free(clients[i]);
	clients[i] = NULL;
}

static void write_exit_file(int status)
{
	char tmp[4096], buf[32];
	int fd, n;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp", exit_file) >= (int)sizeof(tmp))
		return;
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		logmsg("cannot write exit file %s", tmp);
		return;
	}
	n = snprintf(buf, sizeof(buf), "%d\n", status);
	if (write(fd, buf, n) != n || close(fd) != 0 || rename(tmp, exit_file) != 0)
		logmsg("cannot write exit file %s", exit_file);
}

static void reap(void)
{
	int status;
	pid_t pid;

	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		if (pid == pid1 && !pid1_exited) {
			pid1_exited = 1;
			pid1_status = status;
			write_exit_file(status);
		}
	}
}

/* EIO on the master: no slave is open any more (ours was hung up by a vhangup()). Take a
 * fresh one so the pty stays usable for the next getty. */
static int reopen_slave(void)
{
	int fd;

	if (++hangups > 3) /* it does not help: give up rather than spin */
		return 0;
	fd = ioctl(master_fd, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	if (slave_fd >= 0)
		close(slave_fd);
	slave_fd = fd;
	return 1;
}

/* Read what the pty has now; the ring overwrites the oldest output. Returns the bytes read. */
static size_t read_master(void)
{
	size_t got = 0;

	for (int rounds = 0; rounds < 64; rounds++) {
		size_t pos = total % RING_SIZE;
		ssize_t n = read(master_fd, ring + pos, RING_SIZE - pos);
		if (n > 0) {
			total += (uint64_t)n;
			got += (size_t)n;
			hangups = 0;
			continue;
		}
		if (n < 0 && (errno == EINTR))
			continue;
		if (n < 0 && errno == EIO && reopen_slave())
			continue;
		if (n == 0 || errno != EAGAIN)
			master_eof = 1;
		break;
	}
	return got;
}

static void write_master(void)
{
	while (inq_len > 0) {
		ssize_t n = write(master_fd, inq, inq_len);
		if (n > 0) {
			memmove(inq, inq + n, inq_len - (size_t)n);
			inq_len -= (size_t)n;
		} else if (n < 0 && errno == EINTR) {
			continue;
		} else {
			return;
		}
	}
}

static void frame_header(struct client *c, unsigned char type, uint32_t len)
{
	c->out[0] = type;
	put_u32(c->out + 1, len);
	c->out_len = HDR + len;
	c->out_pos = 0;
}

/* Fill the client's frame buffer from the ring and send until the socket is full. */
static int pump(struct client *c)
{
	for (;;) {
		if (c->out_pos < c->out_len) {
			ssize_t n = send(c->fd, c->out + c->out_pos, c->out_len - c->out_pos,
					 MSG_NOSIGNAL | MSG_DONTWAIT);
			if (n > 0) {
				c->out_pos += (size_t)n;
				continue;
			}
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
				return 0;
			return -1;
		}
		if (c->hello && c->cursor < total) {
			uint64_t start = ring_start();
			if (c->cursor < start) {
				frame_header(c, 'g', 8);
				put_u64(c->out + HDR, start);
				c->cursor = start;
				continue;
			}
			size_t pos = c->cursor % RING_SIZE;
			size_t n = total - c->cursor;
			if (n > OUT_CHUNK)
				n = OUT_CHUNK;
			if (n > RING_SIZE - pos)
				n = RING_SIZE - pos;
			frame_header(c, 'o', 8 + n);
			put_u64(c->out + HDR, c->cursor);
			memcpy(c->out + HDR + 8, ring + pos, n);
			c->cursor += n;
			continue;
		}
		if (drained && !c->exit_sent) {
			frame_header(c, 'x', 4);
			put_u32(c->out + HDR, (uint32_t)pid1_status);
			c->exit_sent = 1;
			continue;
		}
		return 0;
	}
}

static int has_output(const struct client *c)
{
	return c->out_pos < c->out_len || (c->hello && c->cursor < total) ||
	       (drained && !c->exit_sent);
}

/* Handle complete frames. Returns -1 on a protocol error; stops early (keeping the rest
 * buffered) when the input queue is full, which applies back-pressure to that client. */
static int parse(struct client *c)
{
	size_t off = 0;
	int rc = 0;

	while (c->in_len - off >= HDR) {
		unsigned char *f = c->in + off;
		uint32_t len = get_u32(f + 1);
		if (len > MAX_IN_PAYLOAD) {
			rc = -1;
			break;
		}
		if (c->in_len - off < HDR + len)
			break;
		if (f[0] == 'i') {
			if (INPUT_QUEUE - inq_len < len)
				break;
			memcpy(inq + inq_len, f + HDR, len);
			inq_len += len;
		} else if (f[0] == 'h' && len == 8) {
			uint64_t from = get_u64(f + HDR);
			c->cursor = from > total ? total : from;
			c->hello = 1;
		} else if (f[0] == 'r' && len == 4) {
			struct winsize ws = { .ws_row = (unsigned short)(f[HDR] << 8 | f[HDR + 1]),
					      .ws_col = (unsigned short)(f[HDR + 2] << 8 | f[HDR + 3]) };
			if (ioctl(master_fd, TIOCSWINSZ, &ws) != 0)
				logmsg("TIOCSWINSZ failed: %s", strerror(errno));
		} /* unknown frames are skipped: newer clients stay compatible */
		off += HDR + len;
	}
	memmove(c->in, c->in + off, c->in_len - off);
	c->in_len -= off;
	return rc;
}

static int client_readable(struct client *c, short revents)
{
	if (revents & POLLERR)
		return -1;
	for (;;) {
		size_t room = sizeof(c->in) - c->in_len;
		if (room == 0) /* held back by a full input queue; a hung-up client is dropped */
			return (revents & POLLHUP) ? -1 : parse(c);
		ssize_t n = recv(c->fd, c->in + c->in_len, room, MSG_DONTWAIT);
		if (n > 0) {
			c->in_len += (size_t)n;
			if (parse(c) < 0)
				return -1;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return 0;
		return -1; /* EOF or error: the client left */
	}
}

static void accept_clients(void)
{
	for (;;) {
		int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			return;
		}
		int slot = -1;
		for (int i = 0; i < MAX_CLIENTS; i++)
			if (!clients[i]) {
				slot = i;
				break;
			}
		struct client *c = slot >= 0 ? calloc(1, sizeof(*c)) : NULL;
		if (!c) {
			close(fd);
			continue;
		}
		c->fd = fd;
		clients[slot] = c;
	}
}

/* PID 1 is gone, so the kernel kills the rest of the container; its cgroups empty out
 * within milliseconds (EBUSY until then). */
static void remove_cgroups(void)
{
	for (int i = 0; i < n_cgroups; i++) {
		for (int tries = 0; tries < 200; tries++) {
			if (rmdir(cgroup_dirs[i]) == 0 || errno == ENOENT)
				break;
			if (errno != EBUSY) {
				logmsg("cannot remove cgroup %s", cgroup_dirs[i]);
				break;
			}
			nanosleep(&(struct timespec){ .tv_nsec = 5000000 }, NULL);
		}
	}
}

/* Wait for PID 1's exec (see the usage) and tell whoever started us how it went. */
static void report_readiness(int exec_fd, int ready_fd)
{
	char buf[1024], line[1100];
	size_t len = 0;
	ssize_t n;

	while (exec_fd >= 0 && len < sizeof(buf) - 1) {
		n = read(exec_fd, buf + len, sizeof(buf) - 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	buf[len] = 0;
	if (exec_fd >= 0)
		close(exec_fd);
	if (len == 0) {
		n = snprintf(line, sizeof(line), "ready\n");
	} else {
		char *msg = strncmp(buf, "E ", 2) == 0 ? buf + 2 : buf;
		msg[strcspn(msg, "\n")] = 0;
		n = snprintf(line, sizeof(line), "error %s\n", msg);
	}
	if (ready_fd >= 0) {
		if (write(ready_fd, line, (size_t)n) != n)
			logmsg("%s", "cannot report readiness");
		close(ready_fd);
	}
}

int serve(const struct serve_args *a)
{
	int sig_fd;
	sigset_t mask;
	int64_t deadline = -1, quiet_until = -1, last_words_until = -1;

	master_fd = a->master_fd;
	slave_fd = a->slave_fd;
	listen_fd = a->listen_fd;
	pid1 = a->pid1;
	exit_file = a->exit_file;
	socket_path = a->socket_path;
	for (int i = 0; i < a->n_cgroups && i < MAX_CGROUPS; i++)
		cgroup_dirs[n_cgroups++] = a->cgroup_dirs[i];

	signal(SIGPIPE, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	signal(SIGINT, SIG_IGN);
	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	sig_fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
	if (sig_fd < 0) {
		perror("berth-shim: signalfd");
		return 1;
	}
	fcntl(master_fd, F_SETFL, fcntl(master_fd, F_GETFL) | O_NONBLOCK);
	fcntl(listen_fd, F_SETFL, fcntl(listen_fd, F_GETFL) | O_NONBLOCK);
	report_readiness(a->exec_fd, a->ready_fd);
	reap(); /* PID 1 may have exited before the signalfd existed */

	for (;;) {
		struct pollfd pfd[3 + MAX_CLIENTS];
		int idx[MAX_CLIENTS];
		int n = 0, timeout = -1;

		if (pid1_exited && !drained) {
			/* The container's last words may still be on their way through the tty's
			 * flip buffer (pushed by a workqueue): read until the pty has been quiet. */
			int64_t now = now_ms();
			if (quiet_until < 0) {
				last_words_until = now + LAST_WORDS_MS;
				quiet_until = now + QUIET_MS;
			}
			if (master_eof || now >= quiet_until || now >= last_words_until) {
				drained = 1;
				deadline = now + DRAIN_MS;
				close(listen_fd);
				listen_fd = -1;
				if (socket_path)
					unlink(socket_path);
			} else {
				timeout = (int)((quiet_until < last_words_until ? quiet_until
									 : last_words_until) - now);
			}
		}
		if (drained) {
			int pending = 0;
			for (int i = 0; i < MAX_CLIENTS; i++)
				if (clients[i] && has_output(clients[i]))
					pending = 1;
			int64_t left = deadline - now_ms();
			if (!pending || left <= 0)
				break;
			timeout = (int)left;
		}
		pfd[n++] = (struct pollfd){ .fd = sig_fd, .events = POLLIN };
		pfd[n++] = (struct pollfd){ .fd = (drained || master_eof) ? -1 : master_fd,
					    .events = POLLIN | (inq_len ? POLLOUT : 0) };
		pfd[n++] = (struct pollfd){ .fd = listen_fd, .events = POLLIN };
		for (int i = 0; i < MAX_CLIENTS; i++) {
			idx[i] = -1;
			if (!clients[i])
				continue;
			short ev = has_output(clients[i]) ? POLLOUT : 0;
			if (clients[i]->in_len < sizeof(clients[i]->in))
				ev |= POLLIN;
			idx[i] = n;
			pfd[n++] = (struct pollfd){ .fd = clients[i]->fd, .events = ev };
		}
		if (poll(pfd, n, timeout) < 0) {
			if (errno == EINTR)
				continue;
			perror("berth-shim: poll");
			return 1;
		}
		if (pfd[0].revents & POLLIN) {
			struct signalfd_siginfo si;
			while (read(sig_fd, &si, sizeof(si)) == sizeof(si))
				;
			reap();
		}
		if ((pfd[1].revents & POLLIN) && read_master() && pid1_exited)
			quiet_until = now_ms() + QUIET_MS;
		if (pfd[2].revents & POLLIN)
			accept_clients();
		for (int i = 0; i < MAX_CLIENTS; i++) {
			if (!clients[i] || idx[i] < 0)
				continue;
			short re = pfd[idx[i]].revents;
			if ((re & (POLLIN | POLLHUP | POLLERR)) && client_readable(clients[i], re) < 0)
				drop_client(i);
		}
		/* input queued by any client goes to the pty; then retry clients it held back */
		write_master();
		for (int i = 0; i < MAX_CLIENTS; i++)
			if (clients[i] && clients[i]->in_len >= HDR && parse(clients[i]) < 0)
				drop_client(i);
		write_master();
		for (int i = 0; i < MAX_CLIENTS; i++)
			if (clients[i] && pump(clients[i]) < 0)
				drop_client(i);
	}
	for (int i = 0; i < MAX_CLIENTS; i++)
		if (clients[i])
			drop_client(i);
	remove_cgroups();
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 1) /* the process title's room: PID 1 of an application container reuses it */
		set_title_area(argv[0], argv[argc - 1] + strlen(argv[argc - 1]) + 1);
	if (argc >= 2 && strcmp(argv[1], "launch") == 0)
		return launch_main(argc - 1, argv + 1);
	fprintf(stderr, "usage: %s launch -S SOCKET_PATH -n NAME  (config on fd 3, see launch.c)\n",
		argv[0]);
	return 2;
}
