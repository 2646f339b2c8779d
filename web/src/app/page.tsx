"use client";

import { useEffect } from "react";
import { useRouter } from "next/navigation";

export default function Home() {
  const router = useRouter();
  useEffect(() => router.replace("/chat"), [router]);
  return (
    <main id="main" className="page">
      <p>
        Opening <a href="/chat">the chat</a>…
      </p>
    </main>
  );
}
