/* test-fuzz-regressions.c: replays the fuzzers' inputs on every build, with
 * no libFuzzer: each seed of tests/fuzz/corpus/<target>/ and each crash the
 * fuzzers found, tests/fuzz/regressions/<target>/, through the very code of
 * the targets (their files are included below), under whatever sanitizers
 * the build has.
 *
 * Each input runs in a child process with its own setup and teardown and a
 * time limit, so one crash cannot hide the others, and a leak (LeakSanitizer
 * checks at the child's exit) fails that input. Every target must have
 * seeds, and every input must pass. */
#define SY_FUZZ_REPLAY 1

#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../fuzz/fuzz_jsonl.c"
#include "../fuzz/fuzz_rate.c"
#include "../fuzz/fuzz_vars.c"
#include "../fuzz/fuzz_workflow.c"

/* Per input, as run.sh gives libFuzzer -timeout=10: what takes longer is a
 * hang (the loader must stop any input well within it). */
#define REPLAY_TIME_LIMIT 10

typedef struct replay_target {
  const char *name;
  int (*init)(void);
  void (*one)(const uint8_t *data, size_t size);
  void (*fini)(void);
} replay_target;

static const replay_target targets[] = {
    {"workflow", sy_fuzz_workflow_init, sy_fuzz_workflow_one,
     sy_fuzz_workflow_fini},
    {"rate", sy_fuzz_rate_init, sy_fuzz_rate_one, sy_fuzz_rate_fini},
    {"vars", sy_fuzz_vars_init, sy_fuzz_vars_one, sy_fuzz_vars_fini},
    {"jsonl", sy_fuzz_jsonl_init, sy_fuzz_jsonl_one, sy_fuzz_jsonl_fini},
};

static int failures;

static uint8_t *read_all(const char *path, size_t *size) {
  FILE *f = fopen(path, "rb");
  uint8_t *buf = NULL;
  size_t len = 0, cap = 0, n;
  if (!f) {
    return NULL;
  }
  do {
    if (len + 4096 > cap) {
      uint8_t *nb = realloc(buf, cap = cap * 2 + 8192);
      if (!nb) {
        free(buf);
        fclose(f);
        return NULL;
      }
      buf = nb;
    }
    n = fread(buf + len, 1, cap - len, f);
    len += n;
  } while (n > 0);
  fclose(f);
  *size = len;
  return buf;
}

/* The child: set up, run the one input, tear down, exit (LSan runs then). */
static void replay_child(const replay_target *t, const char *path) {
  size_t size = 0;
  uint8_t *data;
  alarm(REPLAY_TIME_LIMIT);
  if (!(data = read_all(path, &size))) {
    fprintf(stderr, "%s: cannot read\n", path);
    exit(3);
  }
  if (t->init()) {
    fprintf(stderr, "fuzz_%s: cannot set up the target\n", t->name);
    exit(4);
  }
  t->one(data, size);
  t->fini();
  free(data);
  exit(0);
}

/* Replays one input; returns 1 if it passed. */
static int replay(const replay_target *t, const char *path) {
  int status;
  pid_t pid;
  fflush(NULL);
  if ((pid = fork()) < 0) {
    perror("fork");
    exit(1);
  }
  if (pid == 0) {
    replay_child(t, path);
  }
  if (waitpid(pid, &status, 0) != pid) {
    perror("waitpid");
    exit(1);
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
    return 1;
  }
  if (WIFSIGNALED(status)) {
    fprintf(stderr, "FAIL fuzz_%s %s: killed by signal %d%s\n", t->name, path,
            WTERMSIG(status),
            WTERMSIG(status) == SIGALRM ? " (time limit)" : "");
  } else {
    fprintf(stderr, "FAIL fuzz_%s %s: exit status %d\n", t->name, path,
            WEXITSTATUS(status));
  }
  return 0;
}

static int by_name(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Replays every regular file of dir in name order; returns how many. A
 * missing directory counts as empty. */
static int replay_dir(const replay_target *t, const char *dir) {
  DIR *d = opendir(dir);
  struct dirent *de;
  char **names = NULL;
  int n = 0, cap = 0;
  if (!d) {
    return 0;
  }
  while ((de = readdir(d))) {
    char path[4096];
    struct stat sb;
    snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
    if (de->d_name[0] == '.' || stat(path, &sb) || !S_ISREG(sb.st_mode)) {
      continue;
    }
    if (n == cap) {
      char **nn = realloc(names, sizeof *names * (size_t)(cap = cap * 2 + 16));
      if (!nn) {
        perror("realloc");
        exit(1);
      }
      names = nn;
    }
    if (!(names[n++] = strdup(path))) {
      perror("strdup");
      exit(1);
    }
  }
  closedir(d);
  if (n > 0) {
    qsort(names, (size_t)n, sizeof *names, by_name);
  }
  for (int i = 0; i < n; i++) {
    if (!replay(t, names[i])) {
      failures++;
    }
    free(names[i]);
  }
  free(names);
  return n;
}

int main(void) {
  for (size_t i = 0; i < sizeof targets / sizeof targets[0]; i++) {
    const replay_target *t = &targets[i];
    char dir[4096];
    int seeds, crashes;
    snprintf(dir, sizeof dir, "%s/tests/fuzz/corpus/%s", SY_SOURCE_DIR,
             t->name);
    seeds = replay_dir(t, dir);
    snprintf(dir, sizeof dir, "%s/tests/fuzz/regressions/%s", SY_SOURCE_DIR,
             t->name);
    crashes = replay_dir(t, dir);
    printf("fuzz_%s: %d seeds, %d regression inputs replayed\n", t->name, seeds,
           crashes);
    fflush(stdout);
    /* An empty or missing corpus would make this test pass vacuously. */
    if (seeds == 0) {
      fprintf(stderr, "FAIL fuzz_%s: no seed corpus in %s/tests/fuzz/corpus\n",
              t->name, SY_SOURCE_DIR);
      failures++;
    }
  }
  if (failures) {
    fprintf(stderr, "%d input(s) failed\n", failures);
    return 1;
  }
  return 0;
}
