/*
 * rusage_run - run a command and report its wall time, CPU time and peak RSS.
 *
 * Used by scripts/bench-client to measure both our client and the libmfsio
 * peer the same way. A benchmark tool only; links nothing but libc.
 *
 * Why not os.wait4() in the Python script directly: Linux keeps the peak RSS
 * of the pre-exec image in the child's ru_maxrss (exec_mmap records the old
 * mm's high-water mark), so every child forked from a Python process with
 * N MiB resident reports ru_maxrss >= N MiB. Forking from this tiny process
 * instead puts that floor at ~1-2 MiB.
 *
 * Build: cc -O2 -Wall -o target/bench-peer/rusage_run bench/peer/rusage_run.c
 * Usage: rusage_run RESULT_FILE CMD [ARGS...]
 *   Runs CMD with inherited stdin/stdout/stderr, waits for it with wait4()
 *   and writes one JSON line to RESULT_FILE:
 *   {"exit_code":N,"signal":N,"wall":S,"cpu_user":S,"cpu_sys":S,"max_rss_kib":N}
 *   Exits with CMD's exit code (128+signal if it was killed), 127 if CMD
 *   could not be started, 125 on own errors.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static pid_t child = -1;

static void forward(int sig) {
	if (child > 0) {
		kill(child, sig);
	}
}

static double mono(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
	struct rusage ru;
	struct sigaction sa;
	int status, code, sig;
	double t0, t1;
	FILE *out;

	if (argc < 3) {
		fprintf(stderr, "usage: rusage_run RESULT_FILE CMD [ARGS...]\n");
		return 125;
	}
	out = fopen(argv[1], "w");
	if (out == NULL) {
		fprintf(stderr, "rusage_run: %s: %s\n", argv[1], strerror(errno));
		return 125;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = forward;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);

	t0 = mono();
	child = fork();
	if (child < 0) {
		fprintf(stderr, "rusage_run: fork: %s\n", strerror(errno));
		return 125;
	}
	if (child == 0) {
		fclose(out);
		execvp(argv[2], argv + 2);
		fprintf(stderr, "rusage_run: can't run %s: %s\n", argv[2], strerror(errno));
		_exit(127);
	}
	while (wait4(child, &status, 0, &ru) < 0) {
		if (errno != EINTR) {
			fprintf(stderr, "rusage_run: wait4: %s\n", strerror(errno));
			return 125;
		}
	}
	t1 = mono();
	if (WIFEXITED(status)) {
		code = WEXITSTATUS(status);
		sig = 0;
	} else {
		sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
		code = 128 + sig;
	}
	fprintf(out, "{\"exit_code\":%d,\"signal\":%d,\"wall\":%.6f,\"cpu_user\":%.6f,\"cpu_sys\":%.6f,\"max_rss_kib\":%ld}\n",
	        code, sig, t1 - t0,
	        (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6,
	        (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6,
	        ru.ru_maxrss);
	if (fclose(out) != 0) {
		fprintf(stderr, "rusage_run: writing %s: %s\n", argv[1], strerror(errno));
		return 125;
	}
	return code;
}
