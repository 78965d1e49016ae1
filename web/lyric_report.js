// Shows what the model cannot use of the lyrics (lines it cannot read, section tags it has no token for, lyrics
// longer than it was trained on) on the "ACE-Step Tags + Lyrics" node, under its widgets. The server sends it as the
// node's "text" UI output after every run, "" when nothing is lost (nodes/text.py).
import { app } from "../../scripts/app.js";

const NODE_TYPE = "AceStudioTextEncode";
const WIDGET_NAME = "lyric_report";

function reportWidget(node) {
    const existing = node.widgets?.find((w) => w.name === WIDGET_NAME);
    if (existing) {
        return existing;
    }
    const box = document.createElement("textarea");
    box.readOnly = true;
    box.placeholder = "Lyrics: nothing lost";
    box.style.cssText = "width: 100%; min-height: 3em; color: #f4b860; font-size: 11px; resize: none;";
    // Shown only: never saved with the workflow nor sent with a prompt.
    const widget = node.addDOMWidget(WIDGET_NAME, "lyric_report", box, {
        getValue: () => box.value,
        setValue: (value) => { box.value = value ?? ""; },
        serialize: false,
    });
    widget.serialize = false;
    return widget;
}

app.registerExtension({
    name: "AceStepStudio.LyricReport",
    async beforeRegisterNodeDef(nodeType, nodeData) {
        if (nodeData.name !== NODE_TYPE) {
            return;
        }
        const onExecuted = nodeType.prototype.onExecuted;
        nodeType.prototype.onExecuted = function (output) {
            onExecuted?.apply(this, arguments);
            const text = output?.text?.[0] ?? "";
            if (text || this.widgets?.some((w) => w.name === WIDGET_NAME)) {
                reportWidget(this).value = text;
                this.setDirtyCanvas(true, true);
            }
        };
    },
});
