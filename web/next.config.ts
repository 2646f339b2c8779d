import type { NextConfig } from "next";

// A static export: nginx (production) or the API process (`haven up`) serves web/out, and
// the API is reached on the same origin under /api, so no Node server runs in production.
const nextConfig: NextConfig = {
  output: "export",
  trailingSlash: false,
  images: { unoptimized: true },
  poweredByHeader: false,
  reactStrictMode: true,
  env: { NEXT_PUBLIC_HAVEN_WEB_VERSION: process.env.npm_package_version ?? "dev" },
};

export default nextConfig;
