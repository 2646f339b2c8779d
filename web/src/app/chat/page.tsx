import { Suspense } from "react";
import { ChatPage } from "@/components/chat/ChatPage";

export default function Page() {
  return (
    <Suspense fallback={<main className="page">Loading…</main>}>
      <ChatPage />
    </Suspense>
  );
}
