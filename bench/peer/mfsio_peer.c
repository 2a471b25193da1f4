/*
 * mfsio_peer - benchmark peer for mfs-ingest's MooseFS client.
 *
 * LICENSE NOTE: this program links against libmfsio (MooseFS IO library,
 * GPLv2, Debian package libmfsio-dev). It is a benchmark tool only, used by
 * scripts/bench-client to compare our Rust client with the reference C
 * client. It is never built into, linked with or shipped as part of the
 * mfs-ingest binaries.
 *
 * Build:
 *   cc -O2 -Wall -o target/bench-peer/mfsio_peer bench/peer/mfsio_peer.c -lmfsio -lpthread
 *
 * Usage:
 *   mfsio_peer [--master HOST:PORT] [--write-cache-mb N] big DEST_PATH SIZE_BYTES
 *   mfsio_peer [--master HOST:PORT] [--write-cache-mb N] small DEST_DIR COUNT SIZE THREADS
 *   mfsio_peer [--master HOST:PORT] cat PATH...
 *   mfsio_peer pattern SIZE [FILE_INDEX]
 *
 *   big     writes one file of SIZE_BYTES sequentially from one writer,
 *           with 1 MiB mfs_write() calls, then mfs_close() (which flushes
 *           the write cache and waits until every chunkserver chain has
 *           acknowledged all data and the master has got the write end).
 *   small   writes COUNT files of SIZE bytes each into DEST_DIR (created if
 *           missing) using THREADS pthreads; files are named f000000.bin ...
 *   cat     prints, for each MooseFS file, a line "<size>" and then its
 *           bytes (used to verify writes without going through a mount).
 *   pattern prints to stdout the exact bytes that 'big' (no FILE_INDEX) or
 *           'small' (file FILE_INDEX) writes, for verification; needs no
 *           master.
 *
 * Paths are MooseFS paths relative to the root of the MooseFS namespace
 * (e.g. /bench-1234/peer-big.bin), not paths of a local mount.
 *
 * Data: an 8 MiB xorshift64* buffer is generated once before the timer
 * starts and reused cyclically, so no data generation happens in the timed
 * loop. File i of 'small' starts at offset (i * SIZE) mod 8 MiB of the
 * buffer, 'big' starts at offset 0.
 *
 * Goal: libmfsio 3.0.117 exports no call for setting goal or trash time,
 * so created files inherit them from the parent directory (set them on the
 * directory with mfssetgoal / mfssettrashtime through a mount). --goal is
 * therefore rejected with an error rather than silently ignored.
 *
 * Output: one JSON line on stdout:
 *   {"mode":..,"files":..,"bytes":..,"seconds":..,"cpu_user":..,
 *    "cpu_sys":..,"max_rss_kib":..,"init_seconds":..,"term_seconds":..,
 *    "threads":..,"write_cache_mb":..}
 * "seconds" is the wall time from the first open to the return of the last
 * close (i.e. data acknowledged); "init_seconds" is the time mfs_init took
 * (master connection + thread start) and "term_seconds" the time mfs_term
 * took (session close, see the end of main), neither included in
 * "seconds". CPU and RSS are getrusage(RUSAGE_SELF) of the whole process,
 * init and term included.
 * Errors: one line on stderr, exit status 1.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <mfsio.h>

#define PATTERN_SIZE (8u * 1024u * 1024u)
#define WRITE_SIZE (1u * 1024u * 1024u)
#define DEFAULT_WRITE_CACHE_MB 128 /* same as mfsbdev (nbdmain.c) uses */

static uint8_t *pattern;

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char *fmt, ...) {
	va_list ap;
	char msg[1024];
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	/* keep it one line */
	for (char *p = msg; *p; p++) {
		if (*p == '\n' || *p == '\r') {
			*p = ' ';
		}
	}
	fprintf(stderr, "mfsio_peer: %s\n", msg);
	fflush(stderr);
	_exit(1);
}

static void usage(void) {
	die("usage: mfsio_peer [--master HOST:PORT] [--write-cache-mb N] "
	    "big DEST_PATH SIZE_BYTES | small DEST_DIR COUNT SIZE THREADS | cat PATH... | pattern SIZE [FILE_INDEX]");
}

static double now_mono(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t parse_u64(const char *s, const char *what) {
	char *end;
	unsigned long long v;
	if (s == NULL || *s == '\0' || *s == '-') {
		die("invalid %s: '%s'", what, s ? s : "");
	}
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0 || *end != '\0') {
		die("invalid %s: '%s'", what, s);
	}
	return (uint64_t)v;
}

static void make_pattern(void) {
	uint64_t x = 0x9E3779B97F4A7C15ULL; /* fixed seed: output is reproducible */
	uint64_t *p;
	uint32_t i;
	pattern = malloc(PATTERN_SIZE);
	if (pattern == NULL) {
		die("out of memory allocating pattern buffer");
	}
	p = (uint64_t *)pattern;
	for (i = 0; i < PATTERN_SIZE / 8; i++) {
		x ^= x >> 12;
		x ^= x << 25;
		x ^= x >> 27;
		p[i] = x * 0x2545F4914F6CDD1DULL; /* xorshift64*, little-endian bytes */
	}
}

/* Write `size` bytes of the pattern, starting at pattern offset `start`,
 * into an open mfs descriptor, in chunks of at most WRITE_SIZE that never
 * cross the end of the pattern buffer. Returns 0 or errno. */
static int write_pattern(int fd, uint64_t size, uint64_t start) {
	uint64_t done = 0;
	uint64_t off = start % PATTERN_SIZE;
	while (done < size) {
		uint64_t n = size - done;
		if (n > WRITE_SIZE) {
			n = WRITE_SIZE;
		}
		if (n > PATTERN_SIZE - off) {
			n = PATTERN_SIZE - off;
		}
		ssize_t w = mfs_write(fd, pattern + off, (size_t)n);
		if (w < 0) {
			return errno ? errno : EIO;
		}
		if ((uint64_t)w != n) {
			return EIO; /* libmfsio writes all or fails */
		}
		done += n;
		off += n;
		if (off == PATTERN_SIZE) {
			off = 0;
		}
	}
	return 0;
}

/* ---- small mode ---- */

typedef struct {
	const char *dir;
	uint64_t count;
	uint64_t size;
	pthread_mutex_t lock;
	uint64_t next;
	int err;          /* first error (errno) */
	char errmsg[4400]; /* description of first error */
} small_job;

static void small_fail(small_job *job, int err, const char *op, const char *path) {
	pthread_mutex_lock(&job->lock);
	if (job->err == 0) {
		job->err = err;
		snprintf(job->errmsg, sizeof(job->errmsg), "%s %s: %s", op, path, strerror(err));
	}
	pthread_mutex_unlock(&job->lock);
}

static void *small_worker(void *arg) {
	small_job *job = arg;
	char path[4096];
	for (;;) {
		uint64_t i;
		int fd, err;
		pthread_mutex_lock(&job->lock);
		if (job->err != 0 || job->next >= job->count) {
			pthread_mutex_unlock(&job->lock);
			return NULL;
		}
		i = job->next++;
		pthread_mutex_unlock(&job->lock);

		snprintf(path, sizeof(path), "%s/f%06" PRIu64 ".bin", job->dir, i);
		fd = mfs_open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd < 0) {
			small_fail(job, errno ? errno : EIO, "open", path);
			return NULL;
		}
		err = write_pattern(fd, job->size, i * job->size);
		if (err != 0) {
			mfs_close(fd);
			small_fail(job, err, "write", path);
			return NULL;
		}
		if (mfs_close(fd) < 0) {
			small_fail(job, errno ? errno : EIO, "close", path);
			return NULL;
		}
	}
}

/* ---- cat mode (verification) ---- */

/* For each path: a line "<size>\n" on stdout, then exactly <size> bytes of
 * the file's content. Reading through libmfsio instead of a mount keeps the
 * files from being held open by the mount's session (mfsmount reports
 * looked-up inodes to the master as open and syncs that list only once a
 * minute, so files read through a mount and then deleted stay "sustained"
 * for a while). */
static void do_cat(int n, char **paths) {
	uint8_t *buf = malloc(WRITE_SIZE);
	int i;
	if (buf == NULL) {
		die("out of memory");
	}
	for (i = 0; i < n; i++) {
		struct stat st;
		uint64_t left;
		int fd = mfs_open(paths[i], O_RDONLY);
		if (fd < 0) {
			die("open %s: %s", paths[i], strerror(errno));
		}
		if (mfs_fstat(fd, &st) < 0) {
			die("stat %s: %s", paths[i], strerror(errno));
		}
		if (!S_ISREG(st.st_mode)) {
			die("%s is not a regular file", paths[i]);
		}
		printf("%" PRIu64 "\n", (uint64_t)st.st_size);
		left = (uint64_t)st.st_size;
		while (left > 0) {
			size_t want = left > WRITE_SIZE ? WRITE_SIZE : (size_t)left;
			ssize_t r = mfs_read(fd, buf, want);
			if (r < 0) {
				die("read %s: %s", paths[i], strerror(errno));
			}
			if (r == 0) {
				die("read %s: file shorter than its size", paths[i]);
			}
			if (fwrite(buf, 1, (size_t)r, stdout) != (size_t)r) {
				die("writing to stdout: %s", strerror(errno));
			}
			left -= (uint64_t)r;
		}
		if (mfs_close(fd) < 0) {
			die("close %s: %s", paths[i], strerror(errno));
		}
	}
	if (fflush(stdout) != 0) {
		die("writing to stdout: %s", strerror(errno));
	}
	free(buf);
}

/* ---- main ---- */

static void print_result(const char *mode, uint64_t files, uint64_t bytes, double secs,
                         double init_secs, double term_secs, uint64_t threads, int wcache) {
	struct rusage ru;
	if (getrusage(RUSAGE_SELF, &ru) != 0) {
		die("getrusage: %s", strerror(errno));
	}
	printf("{\"mode\":\"%s\",\"files\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"seconds\":%.6f,"
	       "\"cpu_user\":%.6f,\"cpu_sys\":%.6f,\"max_rss_kib\":%ld,"
	       "\"init_seconds\":%.6f,\"term_seconds\":%.6f,\"threads\":%" PRIu64 ",\"write_cache_mb\":%d}\n",
	       mode, files, bytes, secs,
	       (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6,
	       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6,
	       ru.ru_maxrss, init_secs, term_secs, threads, wcache);
	fflush(stdout);
}

static void do_pattern(int argc, char **argv) {
	uint64_t size, start = 0, done = 0;
	if (argc < 1 || argc > 2) {
		usage();
	}
	size = parse_u64(argv[0], "SIZE");
	if (argc == 2) {
		start = parse_u64(argv[1], "FILE_INDEX") * size;
	}
	make_pattern();
	uint64_t off = start % PATTERN_SIZE;
	while (done < size) {
		uint64_t n = size - done;
		if (n > PATTERN_SIZE - off) {
			n = PATTERN_SIZE - off;
		}
		if (fwrite(pattern + off, 1, (size_t)n, stdout) != n) {
			die("writing pattern to stdout: %s", strerror(errno));
		}
		done += n;
		off = (off + n) % PATTERN_SIZE;
	}
	if (fflush(stdout) != 0) {
		die("writing pattern to stdout: %s", strerror(errno));
	}
	exit(0);
}

int main(int argc, char **argv) {
	char *master = NULL;
	int wcache = DEFAULT_WRITE_CACHE_MB;
	int ai = 1;
	const char *mode;
	mfscfg cfg;
	double t0, t1, ti, tt;
	uint64_t nfiles, nbytes, nthreads;
	char *host, *port, *colon;

	while (ai < argc && strncmp(argv[ai], "--", 2) == 0) {
		if (strcmp(argv[ai], "--master") == 0 && ai + 1 < argc) {
			master = argv[ai + 1];
			ai += 2;
		} else if (strncmp(argv[ai], "--master=", 9) == 0) {
			master = argv[ai] + 9;
			ai += 1;
		} else if (strcmp(argv[ai], "--write-cache-mb") == 0 && ai + 1 < argc) {
			uint64_t v = parse_u64(argv[ai + 1], "--write-cache-mb");
			if (v < 1 || v > 65536) {
				die("--write-cache-mb must be in 1..65536");
			}
			wcache = (int)v;
			ai += 2;
		} else if (strcmp(argv[ai], "--goal") == 0 || strncmp(argv[ai], "--goal=", 7) == 0) {
			die("--goal is not supported: libmfsio 3.0.117 has no setgoal call; "
			    "set goal on the parent directory (mfssetgoal) and files inherit it");
		} else if (strcmp(argv[ai], "--help") == 0 || strcmp(argv[ai], "-h") == 0) {
			usage();
		} else {
			die("unknown option '%s'", argv[ai]);
		}
	}
	if (ai >= argc) {
		usage();
	}
	mode = argv[ai++];

	if (strcmp(mode, "pattern") == 0) {
		do_pattern(argc - ai, argv + ai);
	}
	if (strcmp(mode, "big") != 0 && strcmp(mode, "small") != 0 && strcmp(mode, "cat") != 0) {
		die("unknown mode '%s' (expected big, small, cat or pattern)", mode);
	}
	if (strcmp(mode, "cat") == 0 && argc - ai < 1) {
		usage();
	}
	if (strcmp(mode, "big") == 0 && argc - ai != 2) {
		usage();
	}
	if (strcmp(mode, "small") == 0 && argc - ai != 4) {
		usage();
	}
	if (master == NULL) {
		master = getenv("MFS_MASTER");
	}
	if (master == NULL || *master == '\0') {
		die("--master HOST:PORT is required (or MFS_MASTER in the environment)");
	}
	host = strdup(master);
	if (host == NULL) {
		die("out of memory");
	}
	colon = strrchr(host, ':');
	if (colon != NULL) {
		*colon = '\0';
		port = colon + 1;
	} else {
		port = "9421";
	}
	if (*host == '\0' || *port == '\0') {
		die("invalid --master '%s' (expected HOST:PORT)", master);
	}

	/* parse all arguments before connecting */
	const char *dest = argv[ai];
	uint64_t big_size = 0, count = 0, fsize = 0, threads = 0;
	if (dest[0] != '/') {
		die("destination '%s' must be an absolute MooseFS path (e.g. /dir/file)", dest);
	}
	if (strcmp(mode, "big") == 0) {
		big_size = parse_u64(argv[ai + 1], "SIZE_BYTES");
	} else if (strcmp(mode, "small") == 0) {
		count = parse_u64(argv[ai + 1], "COUNT");
		fsize = parse_u64(argv[ai + 2], "SIZE");
		threads = parse_u64(argv[ai + 3], "THREADS");
		if (threads < 1 || threads > 1024) {
			die("THREADS must be in 1..1024");
		}
	}

	if (strcmp(mode, "cat") != 0) {
		make_pattern(); /* before the timer and before init */
	}

	/* A chunkserver that closes a connection while libmfsio writes to it
	 * must give the library EPIPE (it then retries with another
	 * connection, as mfsmount does, which ignores SIGPIPE too), not kill
	 * the process: under heavy load the peer died of SIGPIPE (exit 141). */
	signal(SIGPIPE, SIG_IGN);

	memset(&cfg, 0, sizeof(cfg));
	cfg.masterhost = host;
	cfg.masterport = port;
	cfg.masterpassword = NULL;
	cfg.mountpoint = "[mfsio_peer]"; /* only a label shown in the master's session list */
	cfg.masterpath = "/";
	cfg.read_cache_mb = 16; /* only 'cat' reads */
	cfg.write_cache_mb = wcache;
	cfg.io_try_cnt = 30; /* mfsmount / mfsbdev default */
	cfg.error_on_lost_chunk = 1; /* fail instead of retrying forever in a benchmark */
	cfg.error_on_no_space = 1;
	cfg.sugid_clear_mode = -1; /* library default */
	cfg.mkdir_copy_sgid = -1;  /* library default */

	/* libmfsio prints connection messages (also on success, e.g. "mfsmaster
	 * accepted connection ...") to stderr; keep them so that stderr carries
	 * at most one line, and show them only if init fails. */
	ti = now_mono();
	{
		FILE *cap = tmpfile();
		int saved = -1, rc;
		fflush(stderr);
		if (cap != NULL) {
			saved = dup(STDERR_FILENO);
			if (saved >= 0) {
				dup2(fileno(cap), STDERR_FILENO);
			}
		}
		rc = mfs_init(&cfg, 0);
		fflush(stderr);
		if (saved >= 0) {
			dup2(saved, STDERR_FILENO);
			close(saved);
		}
		if (rc < 0) {
			char msg[512] = "";
			if (cap != NULL) {
				size_t n;
				rewind(cap);
				n = fread(msg, 1, sizeof(msg) - 1, cap);
				msg[n] = '\0';
				while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' ')) {
					msg[--n] = '\0';
				}
			}
			die("can't connect to master %s:%s%s%s", host, port, msg[0] ? ": " : "", msg);
		}
		if (cap != NULL) {
			fclose(cap);
		}
	}
	ti = now_mono() - ti;

	if (strcmp(mode, "cat") == 0) {
		do_cat(argc - ai, argv + ai);
		/* close the session so that the files read are not held open */
		mfs_term();
		free(host);
		return 0;
	}

	if (strcmp(mode, "big") == 0) {
		int fd, err;
		t0 = now_mono();
		fd = mfs_open(dest, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd < 0) {
			die("open %s: %s", dest, strerror(errno));
		}
		err = write_pattern(fd, big_size, 0);
		if (err != 0) {
			die("write %s: %s", dest, strerror(err));
		}
		if (mfs_close(fd) < 0) { /* flushes and waits for all acknowledgements */
			die("close %s: %s", dest, strerror(errno));
		}
		t1 = now_mono();
		nfiles = 1;
		nbytes = big_size;
		nthreads = 1;
	} else {
		small_job job;
		pthread_t *tids;
		uint64_t i;
		struct stat st;

		memset(&job, 0, sizeof(job));
		job.dir = dest;
		job.count = count;
		job.size = fsize;
		pthread_mutex_init(&job.lock, NULL);
		tids = calloc(threads, sizeof(pthread_t));
		if (tids == NULL) {
			die("out of memory");
		}

		t0 = now_mono();
		if (mfs_mkdir(dest, 0755) < 0) {
			if (errno != EEXIST) {
				die("mkdir %s: %s", dest, strerror(errno));
			}
			if (mfs_stat(dest, &st) < 0 || !S_ISDIR(st.st_mode)) {
				die("%s exists and is not a directory", dest);
			}
		}
		for (i = 0; i < threads; i++) {
			int r = pthread_create(&tids[i], NULL, small_worker, &job);
			if (r != 0) {
				die("pthread_create: %s", strerror(r));
			}
		}
		for (i = 0; i < threads; i++) {
			pthread_join(tids[i], NULL);
		}
		t1 = now_mono();
		if (job.err != 0) {
			die("%s", job.errmsg);
		}
		nfiles = count;
		nbytes = count * fsize;
		nthreads = threads;
		free(tids);
	}
	/* mfs_term() closes the master session cleanly (REGISTER_CLOSESESSION
	 * after a last open-inodes update). Without it the master keeps the
	 * dead session, and with it every file this process created, for
	 * SESSION_SUSTAIN_TIME: deleting those files then leaves them
	 * "sustained" and their chunks are not freed until the session expires.
	 * It is not part of "seconds"; it takes up to ~1 s only because the
	 * library's keep-alive thread polls its stop flag once a second, so it
	 * is reported separately as "term_seconds". */
	tt = now_mono();
	mfs_term();
	tt = now_mono() - tt;
	print_result(mode, nfiles, nbytes, t1 - t0, ti, tt, nthreads, wcache);
	free(host);
	return 0;
}
