"use client";

import Link from "next/link";
import { usePathname } from "next/navigation";
import { useEffect, useState } from "react";
import { AuthProvider, atLeast, useAuth } from "@/lib/auth";
import { SignIn } from "@/components/SignIn";
import { VERSION_CHANGED } from "@/lib/events";

interface VersionInfo {
  version: string;
  build?: string | null;
  commit?: string | null;
  read_only?: { on: boolean; reason?: string | null; since?: string | null };
}

/** The build and read-only mode, read on every page the user opens and every 30 s. */
function useVersion(path: string): VersionInfo | null {
  const [info, setInfo] = useState<VersionInfo | null>(null);
  useEffect(() => {
    let live = true;
    const load = () =>
      fetch("/api/version")
        .then((r) => (r.ok ? (r.json() as Promise<VersionInfo>) : null))
        .then((v) => live && v && setInfo(v))
        .catch(() => undefined);
    void load();
    const every = setInterval(load, 30_000);
    window.addEventListener(VERSION_CHANGED, load);
    return () => {
      live = false;
      clearInterval(every);
      window.removeEventListener(VERSION_CHANGED, load);
    };
  }, [path]);
  return info;
}

function Nav() {
  const { me, signOut } = useAuth();
  const path = usePathname();
  const links = [
    { href: "/chat", label: "Chat" },
    { href: "/documents", label: "Documents" },
    { href: "/search", label: "Search" },
    ...(atLeast(me, "tenant_admin") ? [{ href: "/admin", label: "Administration" }] : []),
  ];
  return (
    <header className="topbar">
      <Link href="/chat" className="brand">
        Haven
      </Link>
      <nav aria-label="Main">
        <ul>
          {links.map((l) => (
            <li key={l.href}>
              <Link href={l.href} aria-current={path === l.href ? "page" : undefined}>
                {l.label}
              </Link>
            </li>
          ))}
        </ul>
      </nav>
      <div className="who">
        <span data-testid="whoami">
          {me?.username ?? "API key"} · {me?.tenant_slug} · <span data-testid="role">{me?.role}</span>
        </span>
        <button type="button" onClick={() => void signOut()}>
          Sign out
        </button>
      </div>
    </header>
  );
}

function Gate({ children }: { children: React.ReactNode }) {
  const { status } = useAuth();
  if (status === "loading") {
    return (
      <main className="page" aria-busy="true">
        <p>Loading…</p>
      </main>
    );
  }
  if (status === "signed-out") return <SignIn />;
  return (
    <>
      <Nav />
      {children}
    </>
  );
}

export function Shell({ children }: { children: React.ReactNode }) {
  const info = useVersion(usePathname());
  const readOnly = info?.read_only?.on;
  return (
    <AuthProvider>
      <a href="#main" className="skip">
        Skip to content
      </a>
      {readOnly && (
        <div role="status" className="banner" data-testid="read-only-banner">
          Haven is in read-only mode: changes are paused
          {info?.read_only?.reason ? ` (${info.read_only.reason})` : ""}. Reading, search and chat
          keep working.
        </div>
      )}
      <div className="frame">
        <Gate>{children}</Gate>
      </div>
      <footer className="footer">
        <span data-testid="build-version">
          Haven {info ? info.version : "…"}
          {info?.build ? ` · build ${info.build}` : ""}
          {info?.commit ? ` · ${info.commit.slice(0, 12)}` : ""}
        </span>
      </footer>
    </AuthProvider>
  );
}
