"""Response headers for anything that carries patient data (DICOM SEG/SR hold names and ids)."""

# No cache (browser, proxy) keeps it; no browser guesses its type from the content.
PATIENT_DATA_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
