/* The vars `switchyard start` builds from its --var arguments: one JSON
 * object per instance, with {n} in values replaced by the instance's number
 * (1..N with --count N). Apart from the command so that the fuzzer of
 * tests/fuzz/fuzz_jsonl.c calls this very code. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "luahost.h"

int sy__cli_var_parse(const char *arg, sy__cli_var *out) {
  const char *eq = strchr(arg, '=');
  if (!eq || eq == arg || (eq == arg + 1 && arg[0] == ':')) {
    return -1;
  }
  out->key = arg;
  out->is_json = eq[-1] == ':';
  out->keylen = (size_t)(eq - arg) - (size_t)out->is_json;
  out->value = eq + 1;
  return 0;
}

/* Replaces each {n} in tmpl by n. */
char *sy__cli_expand(const char *tmpl, long long n) {
  size_t cap = strlen(tmpl) + 1, len = 0;
  char *out = malloc(cap);
  char num[32];
  size_t numlen = (size_t)snprintf(num, sizeof num, "%lld", n);
  for (const char *p = tmpl; out && *p;) {
    if (strncmp(p, "{n}", 3) == 0) {
      if (len + numlen + 1 > cap) {
        char *o2 = realloc(out, cap = (len + numlen + 1) * 2);
        if (!o2) {
          free(out);
          return NULL;
        }
        out = o2;
      }
      memcpy(out + len, num, numlen);
      len += numlen;
      p += 3;
    } else {
      if (len + 2 > cap) {
        char *o2 = realloc(out, cap *= 2);
        if (!o2) {
          free(out);
          return NULL;
        }
        out = o2;
      }
      out[len++] = *p++;
    }
  }
  if (out) {
    out[len] = '\0';
  }
  return out;
}

/* How many {n} expand() replaces in s. */
static size_t count_n(const char *s) {
  size_t k = 0;
  while ((s = strstr(s, "{n}"))) {
    k++;
    s += 3;
  }
  return k;
}

/* Builds the vars of instance *n from the --var arguments; with n NULL,
 * each {n} stays as written. */
char *sy__cli_build_vars(const sy__cli_var *vars, int nvars, const long long *n,
                         char *err, size_t errlen) {
  json_t *obj = json_object();
  char *text;
  for (int i = 0; i < nvars; i++) {
    char *key = strndup(vars[i].key, vars[i].keylen);
    char *val = n ? sy__cli_expand(vars[i].value, *n) : strdup(vars[i].value);
    json_t *j;
    if (!val || !key) {
      free(key);
      free(val);
      json_decref(obj);
      snprintf(err, errlen, "out of memory");
      return NULL;
    }
    if (vars[i].is_json) {
      json_error_t je;
      j = json_loads(val, JSON_DECODE_ANY, &je);
      if (!j) {
        snprintf(err, errlen, "--var %.100s:=%.100s: invalid JSON: %s", key,
                 val, je.text);
        free(key);
        free(val);
        json_decref(obj);
        return NULL;
      }
    } else if (!(j = json_string(val))) {
      snprintf(err, errlen, "--var %.100s: value is not valid UTF-8", key);
      free(key);
      free(val);
      json_decref(obj);
      return NULL;
    }
    free(val);
    if (!json_is_null(j) && json_object_set_new(obj, key, j)) {
      snprintf(err, errlen, "--var %.100s: key is not valid UTF-8", key);
      free(key);
      json_decref(obj);
      return NULL;
    }
    if (json_is_null(j)) {
      json_decref(j); /* null: the var is absent, as in Lua */
    }
    free(key);
  }
  /* The same checks as any other vars (depth, shape). */
  if (sy_vars_check_json(obj, err, errlen)) {
    json_decref(obj);
    return NULL;
  }
  text = json_dumps(obj, JSON_COMPACT | JSON_SORT_KEYS);
  json_decref(obj);
  if (!text) {
    snprintf(err, errlen, "out of memory");
  }
  return text;
}

/* The vars of every instance as one text with {n} still in it, when
 * putting the number into that text gives what building each instance's
 * vars would: {n} appears only inside plain string values (the usual
 * u{n}), which render it as written. Escaping never makes or breaks a
 * {n} (its sequences hold no brace), so the text's {n} are exactly those
 * of the values, provided no key holds one and no JSON value renders one
 * (such as "\u007bn}"). NULL with *err empty when that does not hold;
 * NULL with err set when the vars are bad. Building vars costs more than
 * inserting the row; this is once. */
char *sy__cli_vars_template(const sy__cli_var *vars, int nvars, char *err,
                            size_t errlen) {
  *err = '\0';
  for (int i = 0; i < nvars; i++) {
    char *key = strndup(vars[i].key, vars[i].keylen);
    int n_in_key = !key || count_n(key);
    free(key);
    if (n_in_key) {
      return NULL;
    }
    if (vars[i].is_json) {
      json_t *j;
      char *text;
      int renders_n;
      if (count_n(vars[i].value)) {
        return NULL; /* the number may change the value's shape */
      }
      if (!(j = json_loads(vars[i].value, JSON_DECODE_ANY, NULL))) {
        continue; /* build_vars names the error */
      }
      text = json_dumps(j, JSON_ENCODE_ANY | JSON_COMPACT);
      renders_n = !text || count_n(text);
      free(text);
      json_decref(j);
      if (renders_n) {
        return NULL;
      }
    }
  }
  return sy__cli_build_vars(vars, nvars, NULL, err, errlen);
}
