"use client";

import { createContext, useCallback, useContext, useEffect, useMemo, useRef, useState } from "react";
import { api, must, problemOf, UNAUTHENTICATED, type Schemas } from "@/api/client";
import { currentToken, setToken } from "@/lib/token";

export type Me = Schemas["MeRead"];
export type Role = Me["role"];

const RANK: Record<Role, number> = { viewer: 0, editor: 1, tenant_admin: 2, admin: 3 };

/** Roles nest (viewer < editor < tenant_admin < admin), as on the API. */
export function atLeast(me: Me | null, role: Role): boolean {
  return me !== null && RANK[me.role] >= RANK[role];
}

interface TokenAnswer {
  access_token: string;
  expires_at: string;
}

type Status = "loading" | "signed-out" | "signed-in";

interface AuthState {
  status: Status;
  me: Me | null;
  signIn: (username: string, password: string) => Promise<void>;
  signOut: () => Promise<void>;
}

const AuthContext = createContext<AuthState | null>(null);

/** A POST to the session routes: they want the X-Haven-CSRF header, which a cross-site form
 * cannot send, on top of the SameSite=Strict cookie. */
async function post(path: string, body?: URLSearchParams): Promise<Response> {
  const token = currentToken();
  const headers: Record<string, string> = { "X-Haven-CSRF": "1" };
  if (token) headers.Authorization = `Bearer ${token}`;
  return fetch(path, { method: "POST", body, headers, credentials: "same-origin" });
}

/** Whether a refused session sign-in should fall back to a token alone: an API without
 * sessions (404/405), or read-only mode, where no session can be stored (503 read_only). */
async function noSessionHere(response: Response): Promise<boolean> {
  if (response.status === 404 || response.status === 405) return true;
  if (response.status !== 503) return false;
  const body = (await response.clone().json().catch(() => null)) as { code?: string } | null;
  return body?.code === "read_only";
}

export function AuthProvider({ children }: { children: React.ReactNode }) {
  const [status, setStatus] = useState<Status>("loading");
  const [me, setMe] = useState<Me | null>(null);
  const timer = useRef<ReturnType<typeof setTimeout> | null>(null);

  const clear = useCallback(() => {
    if (timer.current) clearTimeout(timer.current);
    setToken(null);
    setMe(null);
    setStatus("signed-out");
  }, []);

  // The renewal timer calls the latest `refresh` through this ref.
  const renew = useRef<() => Promise<boolean>>(async () => false);

  const adopt = useCallback(async (answer: TokenAnswer, renewable: boolean) => {
    setToken(answer.access_token);
    const who = await must(api.GET("/api/v1/me"));
    setMe(who);
    setStatus("signed-in");
    if (timer.current) clearTimeout(timer.current);
    if (renewable) {
      // A fresh token a minute before this one expires, from the session cookie.
      const due = new Date(answer.expires_at).getTime() - Date.now() - 60_000;
      timer.current = setTimeout(() => void renew.current(), Math.max(due, 5_000));
    }
  }, []);

  const refresh = useCallback(async (): Promise<boolean> => {
    try {
      const response = await post("/api/v1/auth/refresh");
      if (!response.ok) return false;
      await adopt((await response.json()) as TokenAnswer, true);
      return true;
    } catch {
      return false;
    }
  }, [adopt]);

  useEffect(() => {
    renew.current = refresh;
  }, [refresh]);

  useEffect(() => {
    // A call refused with 401: a fresh token from the session, or the sign-in form.
    let busy = false;
    const onRefused = () => {
      if (busy) return;
      busy = true;
      void renew
        .current()
        .then((ok) => {
          if (!ok) clear();
        })
        .finally(() => {
          busy = false;
        });
    };
    window.addEventListener(UNAUTHENTICATED, onRefused);
    return () => window.removeEventListener(UNAUTHENTICATED, onRefused);
  }, [clear]);

  useEffect(() => {
    // On every page load: the session cookie, if any, gives this tab its token.
    let live = true;
    post("/api/v1/auth/refresh")
      .then(async (response) => {
        if (!live) return;
        if (!response.ok) return clear();
        await adopt((await response.json()) as TokenAnswer, true);
      })
      .catch(() => live && clear());
    return () => {
      live = false;
    };
  }, [adopt, clear]);

  const signIn = useCallback(
    async (username: string, password: string) => {
      const form = new URLSearchParams({ username, password });
      // A session: an httpOnly cookie keeps it across reloads, the short token stays in memory.
      let response = await post("/api/v1/auth/session", form);
      let renewable = true;
      if (await noSessionHere(response)) {
        // No session to be had: the token alone, in memory (a reload signs out).
        response = await post("/api/v1/auth/token", form);
        renewable = false;
      }
      if (!response.ok) {
        throw problemOf(await response.json().catch(() => null), response);
      }
      await adopt((await response.json()) as TokenAnswer, renewable);
    },
    [adopt],
  );

  const signOut = useCallback(async () => {
    try {
      await post("/api/v1/auth/logout");
    } finally {
      clear();
    }
  }, [clear]);

  const value = useMemo(() => ({ status, me, signIn, signOut }), [status, me, signIn, signOut]);
  return <AuthContext.Provider value={value}>{children}</AuthContext.Provider>;
}

export function useAuth(): AuthState {
  const value = useContext(AuthContext);
  if (!value) throw new Error("useAuth outside AuthProvider");
  return value;
}
