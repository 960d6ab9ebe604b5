-- The labeling store: pairs to compare, annotators, who was shown what (assignments) and what
-- they chose (labels). Times are unix milliseconds (UTC).

CREATE TABLE pairs (
    id INTEGER PRIMARY KEY,
    prompt TEXT NOT NULL,
    response_a TEXT NOT NULL,
    response_b TEXT NOT NULL,
    -- extra fields of the imported line (or where a generated pair came from), a JSON object
    metadata TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata) AND json_type(metadata) = 'object'),
    -- sha256 of prompt and the two responses: importing the same pair twice adds nothing
    content_hash TEXT NOT NULL UNIQUE,
    imported_at INTEGER NOT NULL,
    -- assignments of this pair that hold a slot (state 'open' or 'judged'); kept by the triggers
    -- below so that finding a pair that still needs labels is an index lookup
    claims INTEGER NOT NULL DEFAULT 0 CHECK (claims >= 0)
);
-- fullest pairs first, so that pairs wanting several labels are finished before new ones start
CREATE INDEX pairs_by_claims ON pairs (claims DESC, id);

CREATE TABLE annotators (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE CHECK (length(name) > 0),
    token_sha256 TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);

-- One row per (pair, annotator): the pair was shown to the annotator in this left/right order.
CREATE TABLE assignments (
    id INTEGER PRIMARY KEY,
    pair_id INTEGER NOT NULL REFERENCES pairs (id),
    annotator_id INTEGER NOT NULL REFERENCES annotators (id),
    -- 0: left shows response_a; 1: left shows response_b
    swapped INTEGER NOT NULL CHECK (swapped IN (0, 1)),
    -- open: leased until expires_at · judged: labeled left/right/tie · skipped · expired: lease
    -- ran out (or was released by an undo) before a label came
    state TEXT NOT NULL CHECK (state IN ('open', 'judged', 'skipped', 'expired')),
    assigned_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    UNIQUE (pair_id, annotator_id)
);
CREATE UNIQUE INDEX assignments_one_open_per_annotator ON assignments (annotator_id) WHERE state = 'open';
CREATE INDEX assignments_open_by_expiry ON assignments (expires_at) WHERE state = 'open';
CREATE INDEX assignments_by_annotator ON assignments (annotator_id, state);

CREATE TABLE labels (
    id INTEGER PRIMARY KEY,
    assignment_id INTEGER NOT NULL UNIQUE REFERENCES assignments (id),
    -- as the annotator saw it; the assignment's `swapped` maps it back to response_a/response_b
    preferred TEXT NOT NULL CHECK (preferred IN ('left', 'right', 'tie', 'skip')),
    labeled_at INTEGER NOT NULL,
    time_spent_ms INTEGER NOT NULL CHECK (time_spent_ms >= 0)
);

CREATE TRIGGER assignments_claim_on_insert AFTER INSERT ON assignments
WHEN NEW.state IN ('open', 'judged')
BEGIN
    UPDATE pairs SET claims = claims + 1 WHERE id = NEW.pair_id;
END;

CREATE TRIGGER assignments_claim_on_update AFTER UPDATE OF state ON assignments
WHEN (OLD.state IN ('open', 'judged')) != (NEW.state IN ('open', 'judged'))
BEGIN
    UPDATE pairs
    SET claims = claims + (CASE WHEN NEW.state IN ('open', 'judged') THEN 1 ELSE -1 END)
    WHERE id = NEW.pair_id;
END;

-- A label settles its assignment in the same statement that stores it.
CREATE TRIGGER labels_settle_assignment AFTER INSERT ON labels
BEGIN
    UPDATE assignments
    SET state = (CASE WHEN NEW.preferred = 'skip' THEN 'skipped' ELSE 'judged' END)
    WHERE id = NEW.assignment_id;
END;
