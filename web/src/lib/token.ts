// The access token lives in this module's memory only: never in localStorage, where any
// script on the page could read it. A reload gets a fresh one from /api/v1/auth/refresh, which
// reads the httpOnly session cookie the browser keeps (SameSite=Strict).
let token: string | null = null;

export function currentToken(): string | null {
  return token;
}

export function setToken(value: string | null): void {
  token = value;
}
