"use client";

import { type ReactNode, useCallback, useEffect, useState } from "react";
import { api, messageOf, must, type Schemas } from "@/api/client";
import type { Role } from "@/lib/auth";
import { useAuth } from "@/lib/auth";
import { VERSION_CHANGED } from "@/lib/events";

const ROLES: Role[] = ["viewer", "editor", "tenant_admin"];

function when(iso: string | null | undefined): string {
  return iso ? new Date(iso).toLocaleString() : "–";
}

/** Load on mount; `reload` after a change; errors in the API's words. */
function useLoad<T>(load: () => Promise<T>) {
  const [data, setData] = useState<T | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [round, setRound] = useState(0);
  useEffect(() => {
    let live = true;
    load()
      .then((value) => {
        if (!live) return;
        setData(value);
        setError(null);
      })
      .catch((e: unknown) => live && setError(messageOf(e)));
    return () => {
      live = false;
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [round]);
  const reload = useCallback(async () => setRound((r) => r + 1), []);
  return { data, error, setError, reload };
}

/** A scrollable table with its column headings; `children` are its rows. */
function Table({
  columns,
  testId,
  children,
}: {
  columns: string[];
  testId?: string;
  children: ReactNode;
}) {
  return (
    <div className="table-wrap">
      <table data-testid={testId}>
        <thead>
          <tr>
            {columns.map((column) => (
              <th key={column} scope="col">
                {column}
              </th>
            ))}
          </tr>
        </thead>
        <tbody>{children}</tbody>
      </table>
    </div>
  );
}

/** A choice of the roles a tenant admin can give. */
function RoleSelect({ value, onChange }: { value: Role; onChange: (role: Role) => void }) {
  return (
    <select value={value} onChange={(e) => onChange(e.target.value as Role)}>
      {ROLES.map((r) => (
        <option key={r} value={r}>
          {r}
        </option>
      ))}
    </select>
  );
}

function Problem({ text }: { text: string | null }) {
  return text ? (
    <p role="alert" className="error">
      {text}
    </p>
  ) : null;
}

export function Users() {
  const { me } = useAuth();
  const { data, error, setError, reload } = useLoad(() =>
    must(api.GET("/api/v1/admin/users", { params: { query: { limit: 500 } } })),
  );
  const [username, setUsername] = useState("");
  const [password, setPassword] = useState("");
  const [role, setRole] = useState<Role>("viewer");

  async function act(call: Promise<unknown>) {
    try {
      await call;
      await reload();
    } catch (e) {
      setError(messageOf(e));
    }
  }

  async function create(event: React.FormEvent) {
    event.preventDefault();
    await act(must(api.POST("/api/v1/admin/users", { body: { username, password, role } })));
    setUsername("");
    setPassword("");
  }

  const update = (id: string, body: Schemas["UserUpdate"]) =>
    act(must(api.PATCH("/api/v1/admin/users/{user_id}", { params: { path: { user_id: id } }, body })));

  return (
    <div className="stack">
      <h2>Users</h2>
      <Problem text={error} />
      <Table testId="users" columns={["Username", "Role", "Active", "Created"]}>
        {data?.map((u) => (
          <tr key={u.id}>
            <td>{u.username}</td>
            <td>
              <label className="sr-only" htmlFor={`role-${u.id}`}>
                Role of {u.username}
              </label>
              <select
                id={`role-${u.id}`}
                value={u.role}
                disabled={u.id === me?.subject_id || u.role === "admin"}
                onChange={(e) => void update(u.id, { role: e.target.value as Role })}
              >
                {(u.role === "admin" ? ["admin" as Role] : ROLES).map((r) => (
                  <option key={r} value={r}>
                    {r}
                  </option>
                ))}
              </select>
            </td>
            <td>
              <button
                type="button"
                disabled={u.id === me?.subject_id}
                onClick={() => void update(u.id, { is_active: !u.is_active })}
                aria-label={`${u.is_active ? "Disable" : "Enable"} ${u.username}`}
              >
                {u.is_active ? "Disable" : "Enable"}
              </button>{" "}
              {u.is_active ? "active" : "disabled"}
            </td>
            <td>{when(u.created_at)}</td>
          </tr>
        ))}
      </Table>
      <form onSubmit={(e) => void create(e)} className="card row filters">
        <h3 className="full">Add a user</h3>
        <label>
          Username
          <input value={username} onChange={(e) => setUsername(e.target.value)} required />
        </label>
        <label>
          Password
          <input
            type="password"
            autoComplete="new-password"
            minLength={10}
            value={password}
            onChange={(e) => setPassword(e.target.value)}
            required
          />
        </label>
        <label>
          Role
          <RoleSelect value={role} onChange={setRole} />
        </label>
        <button type="submit" className="primary">
          Add user
        </button>
      </form>
    </div>
  );
}

export function ApiKeys() {
  const { data, error, setError, reload } = useLoad(() => must(api.GET("/api/v1/admin/api-keys")));
  const [name, setName] = useState("");
  const [role, setRole] = useState<Role>("editor");
  const [created, setCreated] = useState<Schemas["ApiKeyCreated"] | null>(null);

  async function create(event: React.FormEvent) {
    event.preventDefault();
    try {
      setCreated(await must(api.POST("/api/v1/admin/api-keys", { body: { name, role } })));
      setName("");
      await reload();
    } catch (e) {
      setError(messageOf(e));
    }
  }

  async function revoke(id: string) {
    try {
      await must(api.DELETE("/api/v1/admin/api-keys/{key_id}", { params: { path: { key_id: id } } }));
      await reload();
    } catch (e) {
      setError(messageOf(e));
    }
  }

  return (
    <div className="stack">
      <h2>API keys</h2>
      <Problem text={error} />
      {created && (
        <div className="card notice" role="status" data-testid="new-key">
          <p>
            The key <strong>{created.name}</strong>. It is shown only this once: copy it now.
          </p>
          <code className="secret">{created.api_key}</code>
          <div className="row">
            <button type="button" onClick={() => void navigator.clipboard?.writeText(created.api_key)}>
              Copy
            </button>
            <button type="button" onClick={() => setCreated(null)}>
              Done
            </button>
          </div>
        </div>
      )}
      <Table columns={["Name", "Prefix", "Role", "Last used", "State"]}>
        {data?.map((k) => (
          <tr key={k.id}>
            <td>{k.name}</td>
            <td>
              <code>{k.prefix}</code>
            </td>
            <td>{k.role}</td>
            <td>{when(k.last_used_at)}</td>
            <td>
              {k.revoked_at ? (
                `revoked ${when(k.revoked_at)}`
              ) : (
                <button type="button" className="danger" onClick={() => void revoke(k.id)} aria-label={`Revoke ${k.name}`}>
                  Revoke
                </button>
              )}
            </td>
          </tr>
        ))}
      </Table>
      <form onSubmit={(e) => void create(e)} className="card row filters">
        <label>
          Name
          <input value={name} onChange={(e) => setName(e.target.value)} required maxLength={200} />
        </label>
        <label>
          Role
          <RoleSelect value={role} onChange={setRole} />
        </label>
        <button type="submit" className="primary">
          Create key
        </button>
      </form>
    </div>
  );
}

export function Audit() {
  const { data, error } = useLoad(() =>
    must(api.GET("/api/v1/admin/audit", { params: { query: { limit: 200 } } })),
  );
  return (
    <div className="stack">
      <h2>Audit log</h2>
      <Problem text={error} />
      <Table testId="audit" columns={["When", "Who", "Action", "Target", "Request"]}>
        {data?.map((a) => (
          <tr key={a.id}>
            <td>{when(a.created_at)}</td>
            <td>
              {a.actor_kind} {a.actor_id?.slice(0, 8)}
            </td>
            <td>{a.action}</td>
            <td>
              {a.target_type} {a.target_id?.slice(0, 8)}
            </td>
            <td>
              <code>{a.request_id?.slice(0, 12)}</code>
            </td>
          </tr>
        ))}
      </Table>
    </div>
  );
}

export function DeadLetters() {
  const { data, error, setError, reload } = useLoad(() => must(api.GET("/api/v1/admin/dead-letters")));
  async function replay(id: string) {
    try {
      await must(
        api.POST("/api/v1/admin/dead-letters/{dead_letter_id}/replay", {
          params: { path: { dead_letter_id: id } },
        }),
      );
      await reload();
    } catch (e) {
      setError(messageOf(e));
    }
  }
  return (
    <div className="stack">
      <h2>Dead letters</h2>
      <Problem text={error} />
      {data && data.length === 0 && <p className="muted">No dead letters: every task was delivered.</p>}
      <ul>
        {data?.map((d) => (
          <li key={d.id} className="card">
            <strong>{d.task}</strong> on {d.queue} · {when(d.created_at)} · {d.reason ?? "no reason given"}{" "}
            {d.replayed_at ? (
              <span className="muted">replayed {when(d.replayed_at)}</span>
            ) : (
              <button type="button" onClick={() => void replay(d.id)}>
                Replay
              </button>
            )}
          </li>
        ))}
      </ul>
    </div>
  );
}

type Period = "1h" | "24h" | "7d";

export function Usage() {
  const [period, setPeriod] = useState<Period>("24h");
  const [usage, setUsage] = useState<Schemas["UsageRead"] | null>(null);
  const [budget, setBudget] = useState<Schemas["BudgetRead"] | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    let live = true;
    Promise.all([
      must(api.GET("/api/v1/usage", { params: { query: { period } } })),
      must(api.GET("/api/v1/budget")),
    ])
      .then(([u, b]) => {
        if (!live) return;
        setUsage(u);
        setBudget(b);
        setError(null);
      })
      .catch((e: unknown) => live && setError(messageOf(e)));
    return () => {
      live = false;
    };
  }, [period]);
  const peak = Math.max(1, ...(usage?.buckets.map((b) => b.prompt_tokens + b.completion_tokens) ?? [1]));
  return (
    <div className="stack">
      <h2>Usage</h2>
      <Problem text={error} />
      <label>
        Period
        <select value={period} onChange={(e) => setPeriod(e.target.value as Period)}>
          <option value="1h">last hour</option>
          <option value="24h">last day</option>
          <option value="7d">last week</option>
        </select>
      </label>
      {budget && (
        <p data-testid="budget">
          Budget: {budget.budget === null ? "unlimited" : `${budget.used} of ${budget.budget} tokens used`}
          {budget.reserved ? `, ${budget.reserved} held by answers in progress` : ""}
          {budget.left !== null ? `, ${budget.left} left` : ""}; resets {when(budget.resets_at)}.
        </p>
      )}
      {usage && (
        <>
          <dl className="figures">
            <div>
              <dt>Answers</dt>
              <dd>{usage.totals.requests}</dd>
            </div>
            <div>
              <dt>Tokens</dt>
              <dd>{usage.totals.prompt_tokens + usage.totals.completion_tokens}</dd>
            </div>
            <div>
              <dt>From the cache</dt>
              <dd>{usage.totals.cached_answers}</dd>
            </div>
            <div>
              <dt>Active users</dt>
              <dd>{usage.totals.active_users}</dd>
            </div>
            <div>
              <dt>Errors</dt>
              <dd>{usage.totals.errors}</dd>
            </div>
            <div>
              <dt>Latency p50 / p95</dt>
              <dd>
                {usage.totals.latency.p50_ms?.toFixed(0) ?? "–"} / {usage.totals.latency.p95_ms?.toFixed(0) ?? "–"} ms
              </dd>
            </div>
          </dl>
          <figure>
            <figcaption>Tokens per {usage.bucket_seconds / 60} minutes</figcaption>
            <ol className="bars" aria-label="Tokens over time">
              {usage.buckets.map((b) => {
                const tokens = b.prompt_tokens + b.completion_tokens;
                return (
                  <li key={b.start} title={`${when(b.start)}: ${tokens} tokens`}>
                    <span style={{ height: `${(100 * tokens) / peak}%` }} />
                    <span className="sr-only">
                      {when(b.start)}: {tokens} tokens
                    </span>
                  </li>
                );
              })}
            </ol>
          </figure>
          <Table columns={["Who", "Answers", "Tokens", "Errors"]}>
            {usage.users.map((u) => (
              <tr key={`${u.user_id}-${u.api_key_id}`}>
                <td>{u.username ?? u.api_key_name ?? "–"}</td>
                <td>{u.requests}</td>
                <td>{u.prompt_tokens + u.completion_tokens}</td>
                <td>{u.errors}</td>
              </tr>
            ))}
          </Table>
        </>
      )}
    </div>
  );
}

export function Tenants() {
  const { data, error, setError, reload } = useLoad(() => must(api.GET("/api/v1/admin/tenants")));
  const [slug, setSlug] = useState("");
  const [name, setName] = useState("");
  async function create(event: React.FormEvent) {
    event.preventDefault();
    try {
      await must(api.POST("/api/v1/admin/tenants", { body: { slug, name, admin_username: null } }));
      setSlug("");
      setName("");
      await reload();
    } catch (e) {
      setError(messageOf(e));
    }
  }
  async function toggle(t: Schemas["TenantRead"]) {
    try {
      await must(
        api.PATCH("/api/v1/admin/tenants/{tenant_id}", {
          params: { path: { tenant_id: t.id } },
          body: { is_active: !t.is_active },
        }),
      );
      await reload();
    } catch (e) {
      setError(messageOf(e));
    }
  }
  return (
    <div className="stack">
      <h2>Tenants</h2>
      <Problem text={error} />
      <Table columns={["Slug", "Name", "Budget", "Active"]}>
        {data?.map((t) => (
          <tr key={t.id}>
            <td>{t.slug}</td>
            <td>{t.name}</td>
            <td>{t.token_budget ?? "unlimited"}</td>
            <td>
              <button type="button" onClick={() => void toggle(t)} aria-label={`${t.is_active ? "Disable" : "Enable"} ${t.slug}`}>
                {t.is_active ? "Disable" : "Enable"}
              </button>
            </td>
          </tr>
        ))}
      </Table>
      <form onSubmit={(e) => void create(e)} className="card row filters">
        <label>
          Slug
          <input value={slug} onChange={(e) => setSlug(e.target.value)} pattern="[a-z0-9][a-z0-9-]*" required />
        </label>
        <label>
          Name
          <input value={name} onChange={(e) => setName(e.target.value)} required />
        </label>
        <button type="submit" className="primary">
          Add tenant
        </button>
      </form>
    </div>
  );
}

export function Maintenance() {
  const { data, error, setError, reload } = useLoad(() => must(api.GET("/api/v1/admin/read-only")));
  const [reason, setReason] = useState("");
  async function turn(on: boolean) {
    try {
      await must(
        api.PUT("/api/v1/admin/read-only", { body: { on, reason: on ? reason.trim() || null : null } }),
      );
      await reload();
      window.dispatchEvent(new Event(VERSION_CHANGED));
    } catch (e) {
      setError(messageOf(e));
    }
  }
  return (
    <div className="stack">
      <h2>Maintenance</h2>
      <Problem text={error} />
      {data && (
        <p data-testid="read-only-state">
          Read-only mode is <strong>{data.on ? "on" : "off"}</strong>
          {data.on && data.reason ? ` (${data.reason})` : ""}
          {data.on && data.since ? `, since ${when(data.since)}` : ""}
          {data.on && data.by ? ` by ${data.by}` : ""}.
        </p>
      )}
      {data && !data.on && (
        <form
          className="card row filters"
          onSubmit={(e) => {
            e.preventDefault();
            void turn(true);
          }}
        >
          <label>
            Reason shown to everyone
            <input value={reason} maxLength={200} onChange={(e) => setReason(e.target.value)} />
          </label>
          <button type="submit" className="danger">
            Turn read-only mode on
          </button>
        </form>
      )}
      {data?.on && (
        <button type="button" className="primary" onClick={() => void turn(false)}>
          Turn read-only mode off
        </button>
      )}
    </div>
  );
}
