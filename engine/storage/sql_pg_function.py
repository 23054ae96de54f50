"""The PL/pgSQL text of `dq_commit_v1` and `dq_commit_v2`, PostgreSQL's commit in
one round trip (see sql_pg_commit.py for what it does and how it is called).

Migration 8 (sql_tables.py) creates v1, migration 12 v2, so their texts are frozen:
a change of one, or of the columns below, is a new function `dq_commit_vN` and a new
migration. v2 differs only in its events: each row may hold several (sql_events.py),
[execution_id, job_name, type, data, at, more, number of events], numbered by a
running sum of that number. It depends on nothing else of dq, so that the
migrations can import it.
"""

from __future__ import annotations

#: The advisory-lock space of state keys (two-int form: space, hashtext(key)).
STATE_LOCK_SPACE = 0x64715F73  # "dq_s"
V1 = "dq_commit_v1"
#: The one dq calls.
FUNCTION = "dq_commit_v2"

# The columns the function was created with, in the order it reads rows' values by
# position (sql_pg_commit checks them against sql_tables'); its BIGINT ones.
V1_EXECUTION_FIELDS = (
    "id", "job_name", "status", "input", "output", "error", "retry_count", "parent_id", "root_id",
    "priority", "created_at", "run_at", "started_at", "completed_at", "worker_id", "lease_until",
    "token", "control", "wait_reason", "current_step", "idempotency_key", "replay_of",
)  # fmt: skip
V1_STEP_FIELDS = (
    "execution_id", "key", "name", "kind", "status", "attempt", "output", "error", "started_at",
    "completed_at", "job_attempt", "seq", "line",
)  # fmt: skip
V1_EVENT_COLUMNS = ("seq", "execution_id", "job_name", "type", "data", "at")
V1_MESSAGE_COLUMNS = ("seq", "pipe", "data", "at")
_INTS = frozenset({
    "retry_count", "priority", "created_at", "run_at", "started_at", "completed_at", "lease_until", "token",
    "attempt", "job_attempt", "seq", "line", "at",
})  # fmt: skip


def _cast(column: str, expr: str) -> str:
    return f"({expr})::bigint" if column in _INTS else f"({expr})"


def _function_sql(name: str, bundles: bool) -> str:
    ex_cols = ", ".join(f'"{c}"' for c in V1_EXECUTION_FIELDS)
    # New rows come as [index, *values]: a field an applied update set wins (folded).
    ex_vals = ", ".join(
        _cast(c, f"CASE WHEN mm.m ? '{c}' THEN mm.m->>'{c}' ELSE r->>{i + 1} END")
        for i, c in enumerate(V1_EXECUTION_FIELDS)
    )
    ex_sets = ", ".join(
        f'"{c}" = CASE WHEN u.m ? \'{c}\' THEN {_cast(c, f"u.m->>{chr(39)}{c}{chr(39)}")} ELSE t."{c}" END'
        for c in V1_EXECUTION_FIELDS[1:]
    )
    st_cols = ", ".join(f'"{c}"' for c in V1_STEP_FIELDS)
    st_vals = ", ".join(_cast(c, f"r->>{i}") for i, c in enumerate(V1_STEP_FIELDS))
    st_sets = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in V1_STEP_FIELDS[2:])
    ev_cols = V1_EVENT_COLUMNS[1:]
    ev_vals = ", ".join(_cast(c, f"u.r->>{i}") for i, c in enumerate(ev_cols))
    msg_cols = V1_MESSAGE_COLUMNS[1:]
    msg_vals = ", ".join(_cast(c, f"u.r->>{i}") for i, c in enumerate(msg_cols))
    if not bundles:
        count_events = "jsonb_array_length(v_ev)"
        insert_events = (
            f"INSERT INTO events (seq, {', '.join(ev_cols)})\n"
            f"      SELECT s.events - v_ne + u.n, {ev_vals} FROM s, jsonb_array_elements(v_ev) WITH ORDINALITY AS u(r, n)"
        )
    else:  # a row's seq: the counter before + the events up to and with it - its own + 1
        count_events = "coalesce((SELECT sum((r->>6)::bigint) FROM jsonb_array_elements(v_ev) AS j(r)), 0)"
        insert_events = (
            f"INSERT INTO events (seq, {', '.join(ev_cols)}, more, upto)\n"
            f"      SELECT s.events - v_ne + x.upto - x.k + 1, {ev_vals.replace('u.r', 'x.r')}, x.r->>5,\n"
            "        CASE WHEN x.k > 1 THEN s.events - v_ne + x.upto END\n"
            "      FROM s, (SELECT r, (r->>6)::bigint AS k, sum((r->>6)::bigint) OVER (ORDER BY o) AS upto\n"
            "        FROM jsonb_array_elements(v_ev) WITH ORDINALITY AS j(r, o)) AS x"
        )
    return f"""
CREATE OR REPLACE FUNCTION {name}(b jsonb) RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
  v_ids text[] := ARRAY(SELECT jsonb_array_elements_text(b->'i'));
  v_n int := cardinality(v_ids);
  v_exists bool[] := array_fill(false, ARRAY[v_n]);
  v_new bool[] := array_fill(false, ARRAY[v_n]);
  v_tok bigint[] := array_fill(NULL::bigint, ARRAY[v_n]);
  v_st text[] := array_fill(NULL::text, ARRAY[v_n]);
  v_ctl text[] := array_fill(NULL::text, ARRAY[v_n]);
  v_merged jsonb[] := array_fill(NULL::jsonb, ARRAY[v_n]);
  v_uids text[] := '{{}}';
  v_ums jsonb[] := '{{}}';
  v_keys text[] := ARRAY(SELECT jsonb_array_elements_text(b->'k'));
  v_claimable text[] := ARRAY(SELECT jsonb_array_elements_text(b->'cl'));
  v_refused text[] := '{{}}';
  v_applied bool[] := '{{}}';
  v_wake bool := coalesce((b->>'w')::bool, false);
  v_updated bool := false;
  v_ev jsonb := coalesce(b->'e', '[]');
  v_msg jsonb := coalesce(b->'m', '[]');
  v_ne int;
  v_nm int;
  v_last_e bigint;
  v_last_m bigint;
  v_row record;
  v_item jsonb;
  v_f jsonb;
  v_i int;
  v_ok bool;
BEGIN
  -- 1. Locks, in every committer's order: rows (sorted), state keys (sorted); the
  -- seq counter's comes last (step 4). Each statement reads a new snapshot.
  IF v_n > 0 THEN
    FOR v_row IN
      SELECT o.n AS i, e.token, e.status, e.control
      FROM executions AS e JOIN unnest(v_ids) WITH ORDINALITY AS o(id, n) ON e.id = o.id
      ORDER BY e.id FOR UPDATE OF e
    LOOP
      v_exists[v_row.i] := true;
      v_tok[v_row.i] := v_row.token;
      v_st[v_row.i] := v_row.status;
      v_ctl[v_row.i] := v_row.control;
    END LOOP;
  END IF;
  IF cardinality(v_keys) > 0 THEN
    PERFORM count(pg_advisory_xact_lock({STATE_LOCK_SPACE}, hashtext(k))) FROM unnest(v_keys) AS k;
    -- 2. Compare-and-set: [key, expected JSON text or null (absent)].
    IF EXISTS (
      SELECT 1 FROM jsonb_array_elements(coalesce(b->'x', '[]')) AS x(p) LEFT JOIN state AS s ON s.key = x.p->>0
      WHERE NOT CASE
        WHEN x.p->>1 IS NULL THEN s.value IS NULL OR s.value::jsonb = 'null'::jsonb
        ELSE s.value IS NOT NULL AND (s.value = x.p->>1 OR s.value::jsonb = (x.p->>1)::jsonb)
      END
    ) THEN
      RETURN '{{"x": true}}'::jsonb;
    END IF;
  END IF;

  -- 3. New executions an update or fence names start from their new row: [index, token, status, control].
  FOR v_item IN SELECT jsonb_array_elements(coalesce(b->'nt', '[]')) LOOP
    v_i := (v_item->>0)::int;
    IF v_exists[v_i] THEN
      RETURN jsonb_build_object('d', v_ids[v_i]);
    END IF;
    v_new[v_i] := true;
    v_exists[v_i] := true;
    v_tok[v_i] := (v_item->>1)::bigint;
    v_st[v_i] := v_item->>2;
    v_ctl[v_i] := v_item->>3;
  END LOOP;
  -- Fences: [index, token].
  FOR v_item IN SELECT jsonb_array_elements(coalesce(b->'f', '[]')) LOOP
    v_i := (v_item->>0)::int;
    IF NOT v_exists[v_i] OR v_tok[v_i] <> (v_item->>1)::bigint THEN
      v_refused := v_refused || v_ids[v_i];
    END IF;
  END LOOP;
  -- Updates in batch order: [index, token or null, statuses or null, fields].
  FOR v_item IN SELECT jsonb_array_elements(coalesce(b->'u', '[]')) LOOP
    v_i := (v_item->>0)::int;
    v_ok := coalesce(
      v_exists[v_i] AND NOT (v_ids[v_i] = ANY(v_refused))
      AND (v_item->>1 IS NULL OR v_tok[v_i] = (v_item->>1)::bigint)
      AND (v_item->>2 IS NULL OR (v_item->2) ? v_st[v_i]),
      false);
    v_applied := v_applied || v_ok;
    IF v_ok THEN
      v_f := v_item->3;
      IF v_f ? 'token' THEN v_tok[v_i] := (v_f->>'token')::bigint; END IF;
      IF v_f ? 'status' THEN v_st[v_i] := v_f->>'status'; END IF;
      IF v_f ? 'control' THEN v_ctl[v_i] := v_f->>'control'; END IF;
      v_wake := v_wake OR coalesce(v_f->>'status' = ANY(v_claimable), false) OR v_f ? 'run_at';
      v_merged[v_i] := coalesce(v_merged[v_i], '{{}}'::jsonb) || v_f;
      v_updated := v_updated OR NOT v_new[v_i];
    END IF;
  END LOOP;

  -- 4. Writes.
  IF jsonb_array_length(coalesce(b->'n', '[]')) > 0 THEN
    INSERT INTO executions ({ex_cols})
    SELECT {ex_vals}
    FROM jsonb_array_elements(b->'n') AS j(r), LATERAL (SELECT v_merged[(r->>0)::int] AS m) AS mm;
  END IF;
  IF v_updated THEN
    -- unnest of variables: planned as a few rows, so an index lookup per row (a
    -- generate_subscripts source was planned as a hash join over every execution).
    FOR v_i IN 1..v_n LOOP
      IF v_merged[v_i] IS NOT NULL AND NOT v_new[v_i] THEN
        v_uids := v_uids || v_ids[v_i];
        v_ums := v_ums || v_merged[v_i];
      END IF;
    END LOOP;
    UPDATE executions AS t SET {ex_sets}
    FROM unnest(v_uids, v_ums) AS u(id, m)
    WHERE t.id = u.id;
  END IF;
  IF jsonb_array_length(coalesce(b->'s', '[]')) > 0 THEN
    INSERT INTO steps ({st_cols})
    SELECT {st_vals} FROM jsonb_array_elements(b->'s') AS j(r)
    WHERE (r->>0 = ANY(v_refused)) IS NOT TRUE
    ON CONFLICT (execution_id, key) DO UPDATE SET {st_sets};
  END IF;
  IF jsonb_array_length(coalesce(b->'ss', '[]')) > 0 THEN
    INSERT INTO state (key, value) SELECT r->>0, r->>1 FROM jsonb_array_elements(b->'ss') AS j(r)
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;
  END IF;
  IF jsonb_array_length(coalesce(b->'sd', '[]')) > 0 THEN
    DELETE FROM state WHERE key = ANY(ARRAY(SELECT jsonb_array_elements_text(b->'sd')));
  END IF;
  IF cardinality(v_refused) > 0 AND jsonb_array_length(v_ev) > 0 THEN
    v_ev := coalesce((
      SELECT jsonb_agg(r ORDER BY n) FROM jsonb_array_elements(v_ev) WITH ORDINALITY AS j(r, n)
      WHERE (r->>0 = ANY(v_refused)) IS NOT TRUE
    ), '[]'::jsonb);
  END IF;
  v_ne := {count_events};
  v_nm := jsonb_array_length(v_msg);
  IF v_ne > 0 OR v_nm > 0 THEN
    WITH s AS (
      UPDATE seq_counters SET events = events + v_ne, messages = messages + v_nm
      WHERE id = 1 RETURNING events, messages
    ), e AS (
      {insert_events}
    ), m AS (
      INSERT INTO pipe_messages (seq, {", ".join(msg_cols)})
      SELECT s.messages - v_nm + u.n, {msg_vals} FROM s, jsonb_array_elements(v_msg) WITH ORDINALITY AS u(r, n)
    )
    SELECT s.events, s.messages INTO v_last_e, v_last_m FROM s;
  END IF;
  IF v_wake THEN
    PERFORM pg_notify(b->>'ch', b->>'pl');
  END IF;
  RETURN jsonb_build_object(
    'r', to_jsonb(v_refused), 'a', to_jsonb(v_applied), 'c', to_jsonb(v_ctl),
    'e', v_last_e - v_ne + 1, 'm', v_last_m - v_nm + 1);
END
$fn$
"""


#: The migration's DDL (PostgreSQL only).
CREATE_FUNCTION = _function_sql(V1, bundles=False)
CREATE_FUNCTION_V2 = _function_sql(FUNCTION, bundles=True)
