/* The step journal: every ctx call of an instance's current step run
 * (ctx.sleep included), numbered from 1, with what it answered. A step run
 * again from its start (woken from a park, or recovered after a crash)
 * gets the answers of the calls it had made, at once and without reaching
 * any plugin; the first call past them runs for real. A replay that asks
 * for something else fails the step run, naming both.
 *
 * Entries are kept in memory and written in the loop turn's transaction,
 * just before it commits, for the step runs still going then: a step whose
 * calls answer and which ends within one turn writes none (a crash before
 * the commit loses the step's transition too, and the step runs again). A
 * step that parks writes its entries with its park. The rows go when the
 * step's transition commits. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"

/* What a step run's journal may hold: a call's answer is kept whole to be
 * given again, so large answers (an HTTP body) count. Past the bound the
 * call fails in the step, saying so. */
#define ENTRY_MAX ((size_t)16 << 20)
#define JOURNAL_MAX ((size_t)32 << 20)

uint64_t sy__journal_hash(const char *name, const char *args) {
  uint64_t h = 14695981039346656037u; /* FNV-1a */
  for (const char *p = name; *p; p++) {
    h = (h ^ (unsigned char)*p) * 1099511628211u;
  }
  h = (h ^ 0xff) * 1099511628211u; /* no name+args pair reads as another */
  for (const char *p = args ? args : ""; *p; p++) {
    h = (h ^ (unsigned char)*p) * 1099511628211u;
  }
  return h;
}

static void entry_free(sy_journal_entry *j) {
  free((char *)j->what);
  free((char *)j->result);
  free((char *)j->error);
}

static size_t entry_size(const sy_journal_entry *j) {
  return (j->result ? strlen(j->result) : 0) +
         (j->error ? strlen(j->error) : 0);
}

static int grow(sy__journal *jr) {
  if (jr->n == jr->cap) {
    int cap = jr->cap ? jr->cap * 2 : 4;
    sy_journal_entry *v = realloc(jr->v, (size_t)cap * sizeof *v);
    if (!v) {
      return SY_ENOMEM;
    }
    jr->v = v;
    jr->cap = cap;
  }
  return 0;
}

/* Appends a copy of j (its strings duplicated). */
static int append(sy__journal *jr, const sy_journal_entry *j) {
  sy_journal_entry *e;
  if (grow(jr)) {
    return SY_ENOMEM;
  }
  e = &jr->v[jr->n];
  *e = *j;
  e->what = strdup(j->what ? j->what : "");
  e->result = j->result ? strdup(j->result) : NULL;
  e->error = j->error ? strdup(j->error) : NULL;
  if (!e->what || (j->result && !e->result) || (j->error && !e->error)) {
    entry_free(e);
    return SY_ENOMEM;
  }
  jr->bytes += entry_size(e);
  jr->n++;
  return 0;
}

static int load_cb(void *ud, const sy_journal_entry *j) {
  sy_inst *in = ud;
  SY_ASSERT(j->seq == in->journal.n + 1); /* numbered from 1, no gap */
  return append(&in->journal, j);
}

int sy__journal_load(sy_inst *in) {
  sy__journal *jr = &in->journal;
  int rc;
  if (jr->loaded) {
    return 0;
  }
  jr->loaded = 1;
  /* An instance no engine had taken has written no journal. */
  if (in->fresh) {
    return 0;
  }
  if ((rc = sy_store_journal_read(in->e->store, in->id, load_cb, in))) {
    return sy__set_error(in->e, rc, "%s", sy_store_errmsg(in->e->store));
  }
  jr->written = jr->n;
  return 0;
}

const sy_journal_entry *sy__journal_at(const sy_inst *in, int seq) {
  return seq >= 1 && seq <= in->journal.n ? &in->journal.v[seq - 1] : NULL;
}

int sy__journal_fits(const sy_inst *in, const sy_journal_entry *j, char *err,
                     size_t errlen) {
  size_t size = entry_size(j);
  if (size > ENTRY_MAX || in->journal.bytes + size > JOURNAL_MAX) {
    snprintf(err, errlen,
             "%s: its answer (%zu bytes) does not fit the step's journal (at "
             "most %zu MiB an answer, %zu MiB a step run; %zu bytes held): "
             "ask for less, or split the step",
             j->what, size, ENTRY_MAX >> 20, JOURNAL_MAX >> 20,
             in->journal.bytes);
    return 0;
  }
  return 1;
}

/* Lists the instance's journal as one to write before the commit. */
static int mark(sy_inst *in) {
  sy_engine *e = in->e;
  int rc;
  if (!in->journal_listed) {
    in->journal_listed = 1;
    in->journal_next = e->journal_dirty;
    e->journal_dirty = in;
  }
  /* It is written before the turn's commit: make that turn come. */
  if ((rc = sy_store_begin(e->store))) {
    return rc;
  }
  sy__kick(e);
  return 0;
}

int sy__journal_add(sy_inst *in, const sy_journal_entry *j) {
  int rc;
  SY_ASSERT(j->seq == in->journal.n + 1);
  if ((rc = append(&in->journal, j))) {
    return rc;
  }
  return mark(in);
}

const sy_journal_entry *sy__journal_adopt(sy_inst *in, sy_journal_entry *j) {
  sy__journal *jr = &in->journal;
  SY_ASSERT(j->seq == jr->n + 1);
  if (grow(jr)) {
    entry_free(j);
    return NULL;
  }
  jr->v[jr->n] = *j;
  jr->bytes += entry_size(j);
  jr->n++;
  return mark(in) ? NULL : &jr->v[jr->n - 1];
}

int sy__journal_write(sy_inst *in) {
  sy__journal *jr = &in->journal;
  int rc;
  for (; jr->written < jr->n; jr->written++) {
    if ((rc =
             sy_store_journal_put(in->e->store, in->id, &jr->v[jr->written]))) {
      return rc;
    }
  }
  return 0;
}

static void unlist(sy_inst *in) {
  sy_inst **p = &in->e->journal_dirty;
  if (!in->journal_listed) {
    return;
  }
  while (*p != in) {
    p = &(*p)->journal_next;
  }
  *p = in->journal_next;
  in->journal_listed = 0;
}

int sy__journal_flush(sy_engine *e) {
  int rc;
  while (e->journal_dirty) {
    sy_inst *in = e->journal_dirty;
    e->journal_dirty = in->journal_next;
    in->journal_listed = 0;
    if ((rc = sy__journal_write(in))) {
      return rc;
    }
  }
  return 0;
}

static void clear(sy__journal *jr) {
  for (int i = 0; i < jr->n; i++) {
    entry_free(&jr->v[i]);
  }
  jr->n = jr->written = 0;
  jr->bytes = 0;
}

int sy__journal_end(sy_inst *in) {
  int rc = 0;
  if (in->journal.written) {
    rc = sy_store_journal_clear(in->e->store, in->id);
  }
  unlist(in);
  clear(&in->journal);
  in->journal.loaded = 1; /* the next step run starts with none */
  free(in->diverged);
  in->diverged = NULL;
  return rc;
}

void sy__journal_free(sy_inst *in) {
  unlist(in);
  clear(&in->journal);
  free(in->journal.v);
  free(in->diverged);
}

void sy__journal_diverged(sy_inst *in, int seq, const char *was,
                          const char *now) {
  char msg[600];
  if (in->diverged) {
    return; /* the first difference is the one to tell */
  }
  snprintf(msg, sizeof msg,
           "not deterministic: call #%d was %s, now %s (a step run again "
           "from its start must make the same ctx calls in the same order; "
           "it is retried with an empty journal)",
           seq, was, now);
  in->diverged = strdup(msg);
}
