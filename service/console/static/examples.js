// Example inputs per task type, prefilled so a first visit can press Run at once. A few
// languages get text of their own; the rest get the English example (zero-shot works on it
// too, and it shows what the input should look like).

const EXAMPLES = {
  "token-classification": {
    en: { text: "John visited the market in Lagos with Mary yesterday" },
    hau: { text: "Shugaba Muhammadu Buhari ya isa Kano daga Abuja" },
    swa: { text: "Rais Samia Suluhu Hassan alitembelea Arusha jana" },
    yor: { text: "Ààrẹ Bola Tinubu lọ sí Èkó láti Abuja" },
    pcm: { text: "President Tinubu don reach Lagos from Abuja today" },
  },
  "sequence-classification": {
    en: { text: "The children are playing in the city", text_pair: "The children are asleep" },
    swa: { text: "Watoto wanacheza mjini", text_pair: "Watoto wamelala" },
  },
  "question-answering": {
    en: { question: "Where does Mary live?", context: "Mary lives in Nairobi and works at the bank." },
    swa: { question: "Mary anaishi wapi?", context: "Mary anaishi Nairobi na anafanya kazi benki." },
  },
  "fill-mask": {
    en: { text: "The president visited the {mask} yesterday" },
    swa: { text: "Watoto wanacheza {mask} shuleni" },
    hau: { text: "Shugaba ya isa {mask} jiya" },
  },
};

/** The example for a task type in a language (its bare code first, then English). */
export function example(taskType, language, maskToken) {
  const byLanguage = EXAMPLES[taskType] || {};
  const base = (language || "en").split(/[-_]/)[0];
  const found = byLanguage[language] || byLanguage[base] || byLanguage.en || { text: "" };
  const filled = { ...found };
  if (filled.text) filled.text = filled.text.replace("{mask}", maskToken || "[MASK]");
  return filled;
}
