-- Annotators can be removed and their tokens rotated while the server runs; an admin token reads
-- the agreement and per-annotator figures through the API (annotators see only their own
-- progress, so that judgements stay blind). A removed annotator keeps their row and labels (the
-- export still names them); their token no longer signs in.
ALTER TABLE annotators ADD COLUMN role TEXT NOT NULL DEFAULT 'annotator' CHECK (role IN ('annotator', 'admin'));
ALTER TABLE annotators ADD COLUMN removed_at INTEGER;
