"use client";

import { useState } from "react";
import { atLeast, useAuth } from "@/lib/auth";
import { ApiKeys, Audit, DeadLetters, Maintenance, Tenants, Usage, Users } from "./sections";

const TABS = [
  { id: "users", label: "Users", platform: false },
  { id: "keys", label: "API keys", platform: false },
  { id: "usage", label: "Usage", platform: false },
  { id: "audit", label: "Audit log", platform: false },
  { id: "dead", label: "Dead letters", platform: false },
  { id: "tenants", label: "Tenants", platform: true },
  { id: "maintenance", label: "Maintenance", platform: true },
] as const;

type Tab = (typeof TABS)[number]["id"];

export function AdminPage() {
  const { me } = useAuth();
  const [tab, setTab] = useState<Tab>("users");
  if (!atLeast(me, "tenant_admin")) {
    return (
      <main id="main" className="page">
        <h1>Administration</h1>
        <p role="alert">Administration is for tenant administrators.</p>
      </main>
    );
  }
  const tabs = TABS.filter((t) => !t.platform || atLeast(me, "admin"));
  return (
    <main id="main" className="page">
      <h1>Administration</h1>
      <div role="tablist" aria-label="Administration" className="tabs">
        {tabs.map((t) => (
          <button
            key={t.id}
            id={`tab-${t.id}`}
            type="button"
            role="tab"
            aria-selected={tab === t.id}
            aria-controls={`panel-${t.id}`}
            tabIndex={tab === t.id ? 0 : -1}
            onClick={() => setTab(t.id)}
            onKeyDown={(e) => {
              const i = tabs.findIndex((x) => x.id === tab);
              const step = e.key === "ArrowRight" ? 1 : e.key === "ArrowLeft" ? -1 : 0;
              if (!step) return;
              const next = tabs[(i + step + tabs.length) % tabs.length]!;
              setTab(next.id);
              document.getElementById(`tab-${next.id}`)?.focus();
            }}
          >
            {t.label}
          </button>
        ))}
      </div>
      <section role="tabpanel" id={`panel-${tab}`} aria-labelledby={`tab-${tab}`} className="panel">
        {tab === "users" && <Users />}
        {tab === "keys" && <ApiKeys />}
        {tab === "usage" && <Usage />}
        {tab === "audit" && <Audit />}
        {tab === "dead" && <DeadLetters />}
        {tab === "tenants" && <Tenants />}
        {tab === "maintenance" && <Maintenance />}
      </section>
    </main>
  );
}
