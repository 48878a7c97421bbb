/* Shared between the parts of berth-shim: launch.c (the namespace sequence that starts a
 * container), berth-shim.c (the console server it turns into) and init.c (berth-init, what
 * PID 1 of an application container runs). */
#ifndef BERTH_SHIM_H
#define BERTH_SHIM_H

#include <sys/types.h>

#define MAX_CGROUPS 16

/* What the console server needs; launch.c fills it in. */
struct serve_args {
	int master_fd, slave_fd, listen_fd;
	pid_t pid1;
	const char *exit_file;
	const char *socket_path;
	const char *cgroup_dirs[MAX_CGROUPS];
	int n_cgroups;
	int ready_fd;   /* gets "ready\n" or "error <message>\n" */
	int exec_fd;    /* EOF once PID 1's exec succeeded, "E <message>" if it failed */
};

/* berth-shim.c: serve the console until PID 1 has exited and clients were told. */
int serve(const struct serve_args *args);

/* launch.c: `berth-shim launch`: start a container (see launch.c), then serve(). */
int launch_main(int argc, char **argv);

#define MAX_GROUPS 64

/* What berth-init starts (init.c). */
struct init_config {
	char *const *argv;      /* the program and its arguments */
	uid_t uid;
	gid_t gid;
	gid_t groups[MAX_GROUPS];
	int n_groups;
	const char *workdir;    /* NULL: stay in / */
	int status_fd;          /* the shim's exec status pipe (see init.c) */
};

/* launch.c: where main's argv lives (/proc/<pid>/cmdline shows it), for set_title(). */
void set_title_area(char *start, char *end);

/* init.c: be PID 1 of an application container; returns its exit status. */
int run_init(const struct init_config *config);

/* init.c: mkdir -p (mode 0755), errors ignored: the caller's next step reports them. */
void make_dirs(const char *dir);

#endif
