import { DocumentsPage } from "@/components/documents/DocumentsPage";

export default function Page() {
  return <DocumentsPage />;
}
