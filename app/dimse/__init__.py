"""DIMSE intake: a C-STORE receiver for PACS that push studies the classic way."""
