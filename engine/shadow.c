/* Shadow runs: a node asks (sy_api.shadow) that, once its transition
 * commits, a task step run beside the instance on a copy of its vars. The
 * candidate is an instance of its own that has no row: it writes nothing
 * (no journal, step run, incident or transition), sleeps on a timer, and
 * may call only ctx functions marked shadow_ok. The primary side is the
 * instance's own next step, its first run. When both are known, the
 * node's plugin gets the report; a shutdown, or the instance leaving
 * memory first, abandons what is missing. */
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"

static void shadow_free(sy_shadow *sh) {
  sy_engine *e = sh->e;
  if (sh->prev) {
    sh->prev->next = sh->next;
  } else {
    e->shadows = sh->next;
  }
  if (sh->next) {
    sh->next->prev = sh->prev;
  }
  for (int k = 0; k < 2; k++) {
    free((char *)sh->side[k].vars_json);
    free((char *)sh->side[k].error);
  }
  free(sh->compare);
  free(sh);
}

void sy__shadow_side(sy_shadow *sh, int k, sy_shadow_status status,
                     char *vars_json, const char *error, int64_t ms) {
  sy_shadow_report rep;
  char detail[SY_SHADOW_DETAIL_MAX];
  if (sh->ended[k]) {
    free(vars_json);
    return;
  }
  sh->ended[k] = 1;
  sh->side[k].status = status;
  sh->side[k].vars_json = vars_json;
  sh->side[k].error = error ? strdup(error) : NULL;
  sh->side[k].ms = ms;
  if (k == SY__PRIMARY) {
    if (sh->primary) {
      sh->primary->watched_by = NULL;
    }
    sh->primary = NULL;
  } else {
    if (sh->candidate) {
      sh->candidate->shadow_of = NULL;
    }
    sh->candidate = NULL;
  }
  if (!sh->ended[SY__PRIMARY] || !sh->ended[SY__CANDIDATE]) {
    return;
  }
  rep = (sy_shadow_report){.instance_id = sh->instance_id,
                           .workflow = sh->wf->name,
                           .primary = sh->side[SY__PRIMARY],
                           .candidate = sh->side[SY__CANDIDATE],
                           .verdict = SY_SHADOW_UNCOMPARED,
                           .detail = NULL};
  if (sh->compare && rep.primary.status == SY_SHADOW_DONE &&
      rep.candidate.status == SY_SHADOW_DONE) {
    sy_lua_compare q = {.wf = sh->wf,
                        .node = sh->node,
                        .path = sh->compare,
                        .instance_id = sh->instance_id,
                        .primary_step = rep.primary.step,
                        .candidate_step = rep.candidate.step,
                        .primary = rep.primary.vars_json,
                        .candidate = rep.candidate.vars_json};
    int same = 0;
    rep.verdict =
        sy_lua_shadow_compare(sh->e->lua, &q, &same, detail, sizeof detail)
            ? SY_SHADOW_COMPARE_FAILED
        : same ? SY_SHADOW_SAME
               : SY_SHADOW_DIFFERENT;
    rep.detail = detail[0] ? detail : NULL;
  }
  sh->e->shadows_asked--;
  sh->done(sh->plugin, sh->ud, &rep);
  shadow_free(sh);
}

void sy__shadow_never_ran(sy_call *c, const char *why) {
  sy_shadow_side none = {.status = SY_SHADOW_ABANDONED, .error = why};
  sy_shadow_report rep = {.instance_id = c->shadow_instance,
                          .workflow = c->shadow_wf->name,
                          .primary = none,
                          .candidate = none};
  sy_shadow_done done = c->shadow_done;
  rep.verdict = SY_SHADOW_UNCOMPARED;
  rep.candidate.step = c->shadow_step->name;
  c->shadow_done = NULL; /* once */
  c->e->shadows_asked--;
  done(c->node->plugin->state, c->shadow_ud, &rep);
}

void sy__shadow_begin(sy_inst *in, sy_call *c, const sy_task_result *r) {
  sy_engine *e = in->e;
  sy_shadow *sh;
  sy_inst *cand;
  char *vars = NULL, err[256];
  if (r->status != SY_TASK_DONE || !r->next) {
    sy__shadow_never_ran(c, r->status != SY_TASK_DONE
                                ? "the node failed"
                                : "the node ended the instance");
    return;
  }
  if (!(sh = calloc(1, sizeof *sh)) || !(cand = calloc(1, sizeof *cand)) ||
      (r->vars_json ? !(vars = strdup(r->vars_json))
                    : sy_task_vars_json(in->task, &vars))) {
    free(sh);
    free(vars);
    sy__shadow_never_ran(c, "out of memory");
    return;
  }
  if (sy_task_new(e->lua, &cand->task, in->wf, in->id, vars, err, sizeof err)) {
    free(vars);
    free(cand);
    free(sh);
    sy__shadow_never_ran(c, err);
    return;
  }
  free(vars);
  *sh = (sy_shadow){.e = e,
                    .done = c->shadow_done,
                    .plugin = c->node->plugin->state,
                    .ud = c->shadow_ud,
                    .instance_id = in->id,
                    .wf = in->wf,
                    .primary = in,
                    .candidate = cand,
                    .timeout = c->shadow_timeout,
                    .node = c->shadow_node,
                    .compare = c->shadow_compare};
  c->shadow_compare = NULL; /* the shadow's now */
  sh->side[SY__PRIMARY].step = sy_workflow_step(in->wf, r->next)->name;
  sh->side[SY__CANDIDATE].step = c->shadow_step->name;
  sh->next = e->shadows;
  if (e->shadows) {
    e->shadows->prev = sh;
  }
  e->shadows = sh;
  in->watched_by = sh;
  cand->e = e;
  cand->id = in->id;
  cand->wf = in->wf;
  cand->step = c->shadow_step;
  cand->attempt = 1;
  cand->candidate = 1;
  cand->shadow_of = sh;
  sy_task_set_owner(cand->task, cand);
  sy_task_set_shadow(cand->task);
  c->shadow_done = NULL; /* the shadow reports now */
  /* It reaches outside once the decision is durable, as the primary. */
  sy__commit_queue_push(e, cand);
}

void sy__shadow_abandon_all(sy_engine *e) {
  while (e->shadows) {
    sy_shadow *sh = e->shadows;
    if (sh->candidate) {
      sy__inst_free(sh->candidate); /* its side: abandoned */
    }
    if (e->shadows == sh) { /* the primary's side is still missing */
      sy__shadow_side(sh, SY__PRIMARY, SY_SHADOW_ABANDONED, NULL,
                      "the engine stopped first", 0);
    }
  }
}
