-- A pair whose prompt is a conversation keeps its messages, a JSON list of {"role", "content"},
-- for the labeling page to show turn by turn and for export in TRL's conversational format;
-- `prompt` then holds a plain transcript of it ("role: content" paragraphs).
ALTER TABLE pairs ADD COLUMN messages TEXT
    CHECK (messages IS NULL OR (json_valid(messages) AND json_type(messages) = 'array'));
