"""Sending DICOM results back to PACS and archives (MEDIMG_EXPORT_DESTINATIONS): policy, outbox, senders."""
